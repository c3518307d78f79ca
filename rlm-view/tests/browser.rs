//! Pages rendered in a real browser: headless Chromium loads each generated page from
//! `file://`, runs its script and dumps the DOM, which is checked (summary values, row counts,
//! notices, the tree) along with Chromium's console log (no message at all is expected).
//!
//! Chromium is found as `$RLM_CHROMIUM`, else `chromium`, `chromium-browser` or
//! `google-chrome` on the PATH. `.ci/run` installs Debian's `chromium`. Under `CI=true` a
//! missing browser fails this test; elsewhere the test prints a notice and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rlm_view::synth::{self, SynthOptions};
use rlm_view::{ViewOptions, render};

const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RLM_CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A fresh directory under the system's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlm-view-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// What Chromium made of a page.
struct Loaded {
    dom: String,
    console: Vec<String>,
}

fn load(chromium: &Path, page: &Path, work: &Path) -> Loaded {
    let profile = work.join("profile");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    // Read both pipes on threads so that neither fills up.
    let mut stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > BROWSER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium did not finish {} in {BROWSER_TIMEOUT:?}",
                    page.display()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for chromium: {e}"),
        }
    }
    let dom = out.join().unwrap_or_default();
    let log = err.join().unwrap_or_default();
    let console = log
        .lines()
        .filter(|line| line.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    assert!(
        !dom.is_empty(),
        "chromium printed no DOM for {}; its log:\n{log}",
        page.display()
    );
    Loaded { dom, console }
}

/// The text of the element with `id` (up to its first child tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id}"));
    let start = at + dom[at..].find('>').unwrap_or(0) + 1;
    let end = start + dom[start..].find('<').unwrap_or(0);
    &dom[start..end]
}

/// The value of `attr` on the element with `id`.
fn attr_of<'a>(dom: &'a str, id: &str, attr: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id}"));
    let tag_start = dom[..at].rfind('<').unwrap_or(0);
    let tag_end = at + dom[at..].find('>').unwrap_or(0);
    let tag = &dom[tag_start..tag_end];
    let key = format!("{attr}=\"");
    let from = tag
        .find(&key)
        .map(|i| i + key.len())
        .unwrap_or_else(|| panic!("no {attr} on #{id}: {tag}"));
    let to = from + tag[from..].find('"').unwrap_or(0);
    &tag[from..to]
}

fn body_attr<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find("<body")?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let key = format!("{attr}=\"");
    let from = tag.find(&key)? + key.len();
    Some(&tag[from..from + tag[from..].find('"')?])
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Renders `options`' trace, loads it, and checks what every page must show.
fn check(chromium: &Path, work: &Path, name: &str, options: &SynthOptions) -> Loaded {
    let text = synth::trace(options);
    let page = render(&text, &ViewOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let path = work.join(format!("{name}.html"));
    std::fs::write(&path, &page.html).unwrap_or_else(|e| panic!("{e}"));
    let loaded = load(chromium, &path, work);
    let dom = &loaded.dom;
    assert_eq!(
        body_attr(dom, "data-rendered"),
        Some("ok"),
        "{name}: the script did not finish; errors: {}",
        text_of(dom, "js-errors")
    );
    assert_eq!(
        body_attr(dom, "data-errors"),
        None,
        "{name}: {}",
        text_of(dom, "js-errors")
    );
    assert!(
        loaded.console.is_empty(),
        "{name}: console: {:?}",
        loaded.console
    );
    assert_eq!(
        attr_of(dom, "timeline", "data-rows"),
        options.sub_calls.to_string()
    );
    assert_eq!(text_of(dom, "sum-subcalls"), thousands(options.sub_calls));
    let failed = options
        .sub_calls
        .checked_div(options.fail_every)
        .unwrap_or(0);
    assert_eq!(text_of(dom, "sum-failed"), thousands(failed), "{name}");
    assert_eq!(text_of(dom, "sum-query"), synth::QUERY);
    eprintln!(
        "{name}: {} sub-calls, page {} bytes, first render at {} ms",
        options.sub_calls,
        page.html.len(),
        body_attr(dom, "data-render-ms").unwrap_or("?")
    );
    loaded
}

fn generated_pages_render_in_chromium() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Chromium is required under CI (CI=true) and was not found: install Debian's \
             `chromium` (.ci/run does) or set RLM_CHROMIUM"
        );
        eprintln!("NOTICE: Chromium not found; the browser test of rlm-view was skipped");
        return;
    };
    let work = temp_dir("browser");

    // Today's traces: one run, no run ids, some failures.
    let plain = check(
        &chromium,
        &work,
        "plain",
        &SynthOptions {
            sub_calls: 120,
            batch_size: 50,
            fail_every: 12,
            ..SynthOptions::default()
        },
    );
    assert_eq!(text_of(&plain.dom, "sum-stopped"), "final");
    assert_eq!(text_of(&plain.dom, "sum-turns"), "2");
    assert_eq!(text_of(&plain.dom, "sum-answer"), synth::ANSWER);
    assert!(text_of(&plain.dom, "sum-cost").starts_with('$'));
    assert!(
        plain
            .dom
            .contains("class=\"usage-row\" data-model=\"gpt-4o-mini\"")
    );
    assert_eq!(plain.dom.matches("class=\"turn\"").count(), 2);
    // Code is highlighted.
    assert!(plain.dom.contains("<span class=\"hl-fn\">llm_batch</span>"));
    // The rows in view are drawn (16 px each in a 420 px box).
    let drawn: usize = attr_of(&plain.dom, "timeline", "data-drawn")
        .parse()
        .unwrap_or(0);
    assert!((20..=30).contains(&drawn), "{drawn} rows drawn");

    // Recursion: the tree, one details element per run.
    let tree = check(
        &chromium,
        &work,
        "tree",
        &SynthOptions {
            sub_calls: 400,
            children: 3,
            ..SynthOptions::default()
        },
    );
    assert_eq!(tree.dom.matches("class=\"run\"").count(), 4);
    assert!(tree.dom.contains("data-run=\"0.3\" data-depth=\"1\""));
    assert!(text_of(&tree.dom, "runs-title").contains("4 runs"));
    assert!(text_of(&tree.dom, "sum-models").ends_with(", children gpt-4o-mini"));
    // Children in id order.
    let first = tree.dom.find("data-run=\"0.1\"").unwrap_or(usize::MAX);
    let third = tree.dom.find("data-run=\"0.3\"").unwrap_or(0);
    assert!(first < third);

    // A killed run: the trace is cut mid-line and has no final event.
    let cut = check(
        &chromium,
        &work,
        "cut",
        &SynthOptions {
            sub_calls: 90,
            finished: false,
            cut: true,
            ..SynthOptions::default()
        },
    );
    assert!(cut.dom.contains("The trace was cut short"));
    assert!(cut.dom.contains("no final event"));
    assert_eq!(text_of(&cut.dom, "sum-stopped"), "(did not finish)");

    // 100,000 sub-calls: only the visible rows are drawn.
    let big = check(
        &chromium,
        &work,
        "big",
        &SynthOptions {
            sub_calls: 100_000,
            fail_every: 1000,
            ..SynthOptions::default()
        },
    );
    let drawn: usize = attr_of(&big.dom, "timeline", "data-drawn")
        .parse()
        .unwrap_or(usize::MAX);
    assert!(drawn > 0 && drawn < 1000, "{drawn} rows drawn");
    assert_eq!(text_of(&big.dom, "sum-peak").split(' ').next(), Some("16"));

    let _ = std::fs::remove_dir_all(&work);
}

fn a_huge_reply_is_cut_in_the_page_with_a_way_to_see_it_whole() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Chromium is required under CI (CI=true) and was not found"
        );
        eprintln!("NOTICE: Chromium not found; the browser test of rlm-view was skipped");
        return;
    };
    let work = temp_dir("huge");
    // A root reply of 16 MB (before: the page took a minute to open; 100 MB never did).
    let huge = format!("```repl\n{}\n```", "let x = 1; // filler\n".repeat(800_000));
    let text: Vec<String> = synth::trace(&SynthOptions::default())
        .lines()
        .map(|line| {
            let mut event: serde_json::Value =
                serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
            if event["event"] == "root_reply" && event["turn"] == 1 {
                event["text"] = serde_json::Value::String(huge.clone());
            }
            event.to_string()
        })
        .collect();
    let page = render(&text.join("\n"), &ViewOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let path = work.join("huge.html");
    std::fs::write(&path, &page.html).unwrap_or_else(|e| panic!("{e}"));
    let loaded = load(&chromium, &path, &work);
    assert_eq!(body_attr(&loaded.dom, "data-rendered"), Some("ok"));
    assert!(
        loaded.dom.contains("Show all 16,800,")
            && loaded.dom.contains("characters (cut at 65,536)"),
        "no cut notice"
    );
    // What the page laid out, without the embedded data (which holds the whole text).
    let start = loaded.dom.find("<script id=\"trace-data\"").unwrap_or(0);
    let end = start + loaded.dom[start..].find("</script>").unwrap_or(0);
    let shown = loaded.dom.len() - (end - start);
    assert!(shown < 1_000_000, "the page laid out {shown} bytes");
}

fn main() -> std::process::ExitCode {
    rlm_tests::harness::Suite::new()
        .needs("Chromium", find_chromium().is_some())
        .test(
            "generated_pages_render_in_chromium",
            generated_pages_render_in_chromium,
        )
        .test(
            "a_huge_reply_is_cut_in_the_page_with_a_way_to_see_it_whole",
            a_huge_reply_is_cut_in_the_page_with_a_way_to_see_it_whole,
        )
        .run()
}
