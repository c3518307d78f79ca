//! The page's data, read back from rendered pages: counts, runs, notices and cost.

use rlm_view::synth::{self, SynthOptions};
use rlm_view::{ViewError, ViewOptions, render};

/// The JSON data embedded in a page.
fn data(html: &str) -> serde_json::Value {
    let start = html
        .find("<script id=\"trace-data\" type=\"application/json\">")
        .map(|i| i + "<script id=\"trace-data\" type=\"application/json\">".len())
        .unwrap_or_else(|| panic!("no data element"));
    let end = html[start..]
        .find("</script>")
        .map(|i| start + i)
        .unwrap_or_else(|| panic!("data not closed"));
    serde_json::from_str(&html[start..end]).unwrap_or_else(|e| panic!("{e}"))
}

fn page(options: &SynthOptions) -> (rlm_view::Rendered, serde_json::Value) {
    let text = synth::trace(options);
    let page = render(&text, &ViewOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let data = data(&page.html);
    (page, data)
}

#[test]
fn a_plain_trace_gives_its_summary_and_every_call() {
    let (page, data) = page(&SynthOptions {
        sub_calls: 250,
        batch_size: 100,
        fail_every: 10,
        ..SynthOptions::default()
    });
    assert_eq!(page.sub_calls, 250);
    assert_eq!(page.runs, 1);
    assert!(page.notices.is_empty(), "{:?}", page.notices);
    let s = &data["summary"];
    assert_eq!(s["query"], synth::QUERY);
    assert_eq!(s["answer"], synth::ANSWER);
    assert_eq!(s["stopped"], "final");
    assert_eq!(s["sub_calls"], 250);
    assert_eq!(s["failed"], 25);
    assert_eq!(s["turns"], 2);
    assert_eq!(s["peak_in_flight"], 16);
    assert_eq!(s["cost_source"], "trace");
    assert!(s["cost"]["total"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(data["calls"]["id"].as_array().map(Vec::len), Some(250));
    // Grouped by batch, in batch order, items in order.
    let batches = data["batches"].as_array().cloned().unwrap_or_default();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0]["rows"], 100);
    assert_eq!(batches[2]["first_row"], 200);
    assert_eq!(data["calls"]["index"][0], 0);
    assert_eq!(data["calls"]["index"][99], 99);
    assert_eq!(data["calls"]["batch"][100], 2);
    // The turns, with their blocks.
    let turns = data["runs"][0]["turns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0]["blocks"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_recursive_trace_gives_the_tree() {
    let (page, data) = page(&SynthOptions {
        sub_calls: 400,
        children: 3,
        ..SynthOptions::default()
    });
    assert_eq!(page.runs, 4);
    let runs = data["runs"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = runs.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["0", "0.1", "0.2", "0.3"]);
    assert!(
        runs[1..]
            .iter()
            .all(|r| r["parent"] == "0" && r["depth"] == 1)
    );
    assert_eq!(data["summary"]["max_depth"], 1);
    // The children's calls overlap: more than one batch's worth in flight.
    assert!(data["summary"]["peak_in_flight"].as_u64().unwrap_or(0) > 16);
    let calls: u64 = runs.iter().filter_map(|r| r["sub_calls"].as_u64()).sum();
    assert_eq!(calls, 400);
}

#[test]
fn a_cut_trace_renders_with_notices() {
    let options = SynthOptions {
        sub_calls: 60,
        finished: false,
        cut: true,
        ..SynthOptions::default()
    };
    let text = synth::trace(&options);
    assert!(!text.ends_with('\n'));
    let page = render(&text, &ViewOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let notices = page.notices.join("\n");
    assert!(notices.contains("cut short"), "{notices}");
    assert!(notices.contains("no final event"), "{notices}");
    let data = data(&page.html);
    assert!(data["summary"]["stopped"].is_null());
    // Without a final event, usage is added up from the events and priced here.
    assert_eq!(data["summary"]["usage_source"], "events");
    assert_eq!(data["summary"]["cost_source"], "prices");
    assert!(data["summary"]["cost"]["total"].as_f64().unwrap_or(0.0) > 0.0);
}

#[test]
fn calls_cut_off_mid_flight_are_unfinished_and_bad_lines_are_skipped() {
    let text = "{\"t_ms\":0,\"event\":\"run_start\",\"query\":\"q\",\"root_model\":\"r\",\"sub_model\":\"s\"}\n\
                not json\n\
                {\"t_ms\":5,\"event\":\"sub_call_start\",\"turn\":1,\"id\":1,\"model\":\"s\",\"prompt\":\"p\"}\n\
                {\"t_ms\":9,\"event\":\"sub_call_end\",\"turn\":1,\"id\":2,\"model\":\"s\",\"latency_ms\":4,\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\
                [1,2]\n";
    let page = render(text, &ViewOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let data = data(&page.html);
    assert_eq!(data["summary"]["sub_calls"], 2);
    assert_eq!(data["summary"]["unfinished"], 1);
    // The end without a start is placed by its latency.
    let starts = data["calls"]["start"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(starts.contains(&serde_json::json!(5)));
    assert!(
        page.notices
            .iter()
            .any(|n| n.contains("2 line(s)") && n.contains("line 2"))
    );
    assert_eq!(
        data["summary"]["cost"]["unpriced"],
        serde_json::json!(["s"])
    );
}

#[test]
fn text_that_closes_the_script_element_stays_data() {
    let text = "{\"t_ms\":0,\"event\":\"run_start\",\"query\":\"</script><script>alert(1)</script><!--\",\"root_model\":\"r\",\"sub_model\":\"s\"}\n";
    let page = render(text, &ViewOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!page.html.contains("alert(1)</script>"));
    assert_eq!(
        data(&page.html)["summary"]["query"],
        "</script><script>alert(1)</script><!--"
    );
}

#[test]
fn a_file_without_events_is_an_error() {
    for text in ["", "\n\n", "hello\nworld\n"] {
        assert!(matches!(
            render(text, &ViewOptions::default()),
            Err(ViewError::NoEvents { .. })
        ));
    }
}

#[test]
fn a_big_trace_keeps_the_page_small() {
    let (page, data) = page(&SynthOptions {
        sub_calls: 20_000,
        ..SynthOptions::default()
    });
    assert_eq!(page.sub_calls, 20_000);
    let chars = data["preview_chars"].as_u64().unwrap_or(0);
    assert!(chars > 0 && chars < 240, "{chars}");
    assert!(
        data["calls"]["prompt"][0]
            .as_str()
            .unwrap_or("")
            .chars()
            .count()
            <= chars as usize + 1
    );
    assert!(page.notices.iter().any(|n| n.contains("cut to")));
}

#[test]
fn held_and_refused_answers_are_marked_on_their_turns() {
    let lines = [
        r#"{"t_ms":0,"event":"run_start","query":"q","root_model":"r","sub_model":"s","context":{}}"#,
        r#"{"t_ms":1,"event":"turn_start","turn":1}"#,
        "{\"t_ms\":2,\"event\":\"root_reply\",\"turn\":1,\"text\":\"```repl\\nprint(1);\\n```\\nFINAL(9)\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1},\"elapsed_ms\":1}",
        r#"{"t_ms":3,"event":"code_block","turn":1,"block":0,"code":"print(1);","output":"1","elapsed_ms":0}"#,
        r#"{"t_ms":4,"event":"turn_start","turn":2}"#,
        "{\"t_ms\":5,\"event\":\"root_reply\",\"turn\":2,\"text\":\"```repl\\nFINAL(x)\\n```\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1},\"elapsed_ms\":1}",
        r#"{"t_ms":6,"event":"code_block","turn":2,"block":0,"code":"FINAL(x)","output":"","error":"Variable not found: x","elapsed_ms":0}"#,
        r#"{"t_ms":7,"event":"turn_start","turn":3}"#,
        r#"{"t_ms":8,"event":"root_reply","turn":3,"text":"FINAL(1)","usage":{"prompt_tokens":5,"completion_tokens":1},"elapsed_ms":1}"#,
        r#"{"t_ms":9,"event":"turn_start","turn":4}"#,
        r#"{"t_ms":10,"event":"root_reply","turn":4,"text":"FINAL(1)","usage":{"prompt_tokens":5,"completion_tokens":1},"elapsed_ms":1}"#,
        r#"{"t_ms":11,"event":"final","answer":"1","stopped":"final","iterations":4,"elapsed_ms":11,"usage":{"r":{"calls":4,"prompt_tokens":20,"completion_tokens":4}},"warnings":["turn 3: the answer was held for confirmation: it is an \"Error: ...\" string"]}"#,
    ];
    let text = lines.join("\n") + "\n";
    let page = render(&text, &ViewOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let data = data(&page.html);
    let turns = data["runs"][0]["turns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let flags: Vec<(bool, bool)> = turns
        .iter()
        .map(|t| {
            (
                t["held"].as_bool().unwrap_or(false),
                t["final_refused"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    // Turn 1: a text FINAL written beside code, not accepted. Turn 2: code, no text marker.
    // Turn 3: held. Turn 4: the answer.
    assert_eq!(
        flags,
        [(false, true), (false, false), (true, false), (false, false)]
    );
    assert_eq!(turns[1]["blocks"][0]["error"], "Variable not found: x");
    assert_eq!(data["summary"]["usage_source"], "final");
    assert_eq!(
        data["summary"]["cost"]["unpriced"],
        serde_json::json!(["r"])
    );
}

#[test]
fn a_special_file_is_refused_before_it_is_read() {
    // Before: `rlm view /dev/zero` read until memory ran out.
    let out = std::env::temp_dir().join(format!("rlm-view-zero-{}.html", std::process::id()));
    let result = rlm_view::render_file(
        std::path::Path::new("/dev/zero"),
        &out,
        &rlm_view::ViewOptions::default(),
    );
    let error = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("not a regular file"), "{error}");
    assert!(!out.exists());
}

/// A fresh directory for one test, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rlm-view-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = Scratch::new("fifo");
    let fifo = dir.0.join("trace.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap_or_else(|e| panic!("mkfifo: {e}"));
    assert!(made.success());
    // Before: opening the FIFO blocked until a writer came, forever. A thread keeps a hang
    // from hanging the test run; the bound is a safety net, not a timing assertion.
    let out = dir.0.join("page.html");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(rlm_view::render_file(&fifo, &out, &ViewOptions::default()));
    });
    let result = receiver
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("rlm view blocked on a FIFO"));
    match result {
        Err(ViewError::Read { source, .. }) => {
            assert!(
                source.to_string().contains("not a regular file"),
                "{source}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_page_never_replaces_its_trace() {
    let dir = Scratch::new("same");
    let trace = dir.0.join("t.jsonl");
    let text = synth::trace(&SynthOptions::default());
    std::fs::write(&trace, &text).unwrap_or_else(|e| panic!("{e}"));
    let mut outs = vec![trace.clone(), dir.0.join(".").join("t.jsonl")];
    #[cfg(unix)]
    {
        let link = dir.0.join("link.html");
        std::os::unix::fs::symlink(&trace, &link).unwrap_or_else(|e| panic!("{e}"));
        outs.push(link);
        let hard = dir.0.join("hard.html");
        std::fs::hard_link(&trace, &hard).unwrap_or_else(|e| panic!("{e}"));
        outs.push(hard);
    }
    for out in outs {
        let result = rlm_view::render_file(&trace, &out, &ViewOptions::default());
        assert!(
            matches!(result, Err(ViewError::SameFile { .. })),
            "{}: {result:?}",
            out.display()
        );
        assert_eq!(
            std::fs::read_to_string(&trace).unwrap_or_default(),
            text,
            "the trace is untouched"
        );
    }
}

#[test]
fn placeholders_in_a_file_name_stay_text() {
    let dir = Scratch::new("placeholder");
    let trace = dir.0.join("t{{data}}{{script}}.jsonl");
    std::fs::write(&trace, synth::trace(&SynthOptions::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = dir.0.join("page.html");
    let page = rlm_view::render_file(&trace, &out, &ViewOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    // The data parses (before: it was spliced into the title) and the title is the name.
    let parsed = data(&page.html);
    assert_eq!(parsed["summary"]["stopped"], "final");
    assert!(
        page.html
            .contains("<title>rlm trace: t{{data}}{{script}}.jsonl</title>")
    );
    assert_eq!(page.html.matches("<script id=\"trace-data\"").count(), 1);
}

#[test]
fn held_and_refused_answers_come_from_the_turns_verdicts() {
    // The warnings say nothing of turn 2: the verdicts the engine recorded decide.
    let usage = r#""usage":{"prompt_tokens":5,"completion_tokens":1}"#;
    let end = |turn: u32, verdict: &str| {
        format!(
            r#"{{"t_ms":{turn},"event":"turn_end","turn":{turn},{usage},"root_latency_ms":1,"blocks":0,"failed_blocks":0,"sub_calls":0,"failed_sub_calls":0,"cancelled_sub_calls":0,"verdict":"{verdict}"}}"#
        )
    };
    let reply = |turn: u32, text: &str| {
        format!(
            r#"{{"t_ms":{turn},"event":"root_reply","turn":{turn},"text":{},{usage},"elapsed_ms":1}}"#,
            serde_json::Value::String(text.to_owned())
        )
    };
    let lines = [
        r#"{"t_ms":0,"event":"run_start","query":"q","root_model":"r","sub_model":"s"}"#.to_owned(),
        reply(1, "no marker at all"),
        end(1, "refused"),
        reply(2, "FINAL(Error: boom)"),
        end(2, "held"),
        reply(3, "FINAL(1)"),
        end(3, "accepted"),
        r#"{"t_ms":9,"event":"final","answer":"1","stopped":"final","iterations":3,"elapsed_ms":9,"warnings":[]}"#.to_owned(),
    ];
    let page = render(&(lines.join("\n") + "\n"), &ViewOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let data = data(&page.html);
    let flags: Vec<(bool, bool)> = data["runs"][0]["turns"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["held"].as_bool().unwrap_or(false),
                t["final_refused"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(flags, [(false, true), (true, false), (false, false)]);
}
