use std::sync::Arc;

use rlm_core::mock::MockBackend;

use super::*;
use crate::SandboxLimits;

fn rlm_over(root: MockBackend) -> (Rlm, Arc<MockBackend>) {
    let root = Arc::new(root);
    let rlm = Rlm::builder(Arc::clone(&root) as Arc<dyn rlm_core::LlmBackend>)
        .root_model("root")
        .build()
        .unwrap();
    (rlm, root)
}

fn first_user_message(request: &rlm_core::CompletionRequest) -> String {
    request
        .messages
        .iter()
        .find(|m| m.role == rlm_core::Role::User)
        .map(|m| m.content.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn follow_ups_keep_variables_and_see_the_conversation() {
    let (rlm, root) = rlm_over(MockBackend::scripted([
        "```repl\nlet words = split(context, \" \");\nFINAL(words.len())\n```",
        "```repl\nFINAL(words[1])\n```",
        "```repl\nlet last = words[-1];\nFINAL(last)\n```",
    ]));
    let mut session = rlm.session(Context::from("alpha beta gamma"));
    assert_eq!(session.ask("How many words?").await.unwrap().answer, "3");
    assert_eq!(session.ask("The second?").await.unwrap().answer, "beta");
    assert_eq!(session.ask("The last?").await.unwrap().answer, "gamma");
    assert_eq!(session.variable_names(), ["words", "last"]);
    let history: Vec<_> = session
        .history()
        .iter()
        .map(|e| e.answer.as_str())
        .collect();
    assert_eq!(history, ["3", "beta", "gamma"]);

    let requests = root.requests();
    assert_eq!(requests.len(), 3);
    // The first question is a plain run; the follow-ups are told the session, the earlier
    // questions with their answers, and the variables.
    let first = first_user_message(&requests[0]);
    assert!(!first.contains("continues a session"), "{first}");
    let third = first_user_message(&requests[2]);
    assert!(third.contains("continues a session"), "{third}");
    assert!(
        third.contains("Query 1: How many words?\nAnswer 1: 3"),
        "{third}"
    );
    assert!(
        third.contains("Query 2: The second?\nAnswer 2: beta"),
        "{third}"
    );
    assert!(third.contains("words"), "{third}");
    assert!(third.contains("Query: The last?"), "{third}");
}

/// A first question answered without code leaves a REPL that was never needed, and so never
/// built during the run: the next question still finds the context, and keeps what it makes.
#[tokio::test]
async fn a_follow_up_after_an_answer_without_code_finds_the_context() {
    let (rlm, _) = rlm_over(MockBackend::scripted([
        "FINAL(hello)",
        "```repl\nlet words = split(context, \" \");\nFINAL(words.len())\n```",
        "```repl\nFINAL(words[0])\n```",
    ]));
    let mut session = rlm.session(Context::from("alpha beta gamma"));
    assert_eq!(session.ask("Say hello").await.unwrap().answer, "hello");
    assert!(session.variable_names().is_empty());
    assert_eq!(session.ask("How many words?").await.unwrap().answer, "3");
    assert_eq!(session.ask("The first?").await.unwrap().answer, "alpha");
    assert_eq!(session.variable_names(), ["words"]);
}

#[tokio::test]
async fn a_saved_session_resumes_with_its_variables_and_history() {
    let (rlm, _) = rlm_over(MockBackend::scripted([
        "```repl\nlet n = 41;\nlet xs = [1, 2.5, \"three\", (), true, #{k: [1]}];\nconst C = 7;\nlet f = |x| x + 1;\nfn g(a) { a }\nFINAL(n)\n```",
    ]));
    let mut session = rlm.session(Context::from("doc"));
    session.ask("q1").await.unwrap();
    let file = session.snapshot();
    assert_eq!(file.format, "rlm-session");
    assert_eq!(file.version, 1);
    let names: Vec<_> = file.variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["n", "xs", "C"]);
    assert!(file.variables[2].constant);
    // What cannot be saved is listed, never silently dropped.
    let skipped: Vec<_> = file
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(skipped, [("f", "variable"), ("g(a)", "function")]);
    assert!(file.skipped[0].why.contains("function pointer"));

    let text = file.to_json();
    let (rlm2, root2) = rlm_over(MockBackend::scripted([
        "```repl\nFINAL(`${n + 1} ${xs[1] + 0.5} ${xs[2]} ${xs[5].k[0]} ${C}`)\n```",
    ]));
    let parsed = SessionFile::parse(&text).unwrap();
    assert_eq!(parsed, file);
    let mut resumed = Session::restore(rlm2, Context::from("doc"), parsed).unwrap();
    assert_eq!(resumed.history().len(), 1);
    let result = resumed.ask("q2").await.unwrap();
    assert_eq!(result.answer, "42 3.0 three 1 7");
    let first = first_user_message(&root2.requests()[0]);
    assert!(first.contains("Query 1: q1\nAnswer 1: 41"), "{first}");
    // Still listed when saved again.
    let again = resumed.snapshot();
    assert!(again.skipped.iter().any(|s| s.name == "g(a)"));
}

#[tokio::test]
async fn another_context_is_refused_on_resume() {
    let (rlm, _) = rlm_over(MockBackend::scripted(["FINAL(1)"]));
    let mut session = rlm.session(Context::from("one"));
    session.ask("q").await.unwrap();
    let file = session.snapshot();
    let error = Session::restore(rlm.clone(), Context::from("two"), file.clone()).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("different context"), "{message}");
    // A string and a one-document list of it are different contexts too.
    let error = Session::restore(
        rlm.clone(),
        Context::Documents(vec!["one".into()]),
        file.clone(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("different context"));
    assert!(Session::restore(rlm, Context::from("one"), file).is_ok());
}

#[test]
fn unknown_versions_and_broken_files_are_refused_clearly() {
    let good = serde_json::json!({
        "format": "rlm-session", "version": 1,
        "context": {"sha256": "00", "kind": "string", "chars": 0},
    });
    assert!(SessionFile::parse(&good.to_string()).is_ok());

    let mut newer = good.clone();
    newer["version"] = 2.into();
    let e = SessionFile::parse(&newer.to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("version 2 is not supported"), "{e}");

    let mut other = good.clone();
    other["format"] = "something".into();
    let e = SessionFile::parse(&other.to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a session file"), "{e}");

    let text = good.to_string();
    let e = SessionFile::parse(&text[..text.len() - 5])
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");

    let mut typo = good.clone();
    typo["variablez"] = serde_json::json!([]);
    let e = SessionFile::parse(&typo.to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("malformed"), "{e}");
}

#[test]
fn a_value_that_contradicts_its_type_is_refused() {
    let (rlm, _) = rlm_over(MockBackend::scripted(["FINAL(1)"]));
    let context = Context::from("c");
    let stamp = rlm.session(context.clone()).snapshot().context;
    let file = |kind: &str, value: Value| SessionFile {
        format: SESSION_FORMAT.into(),
        version: 1,
        saved_by: String::new(),
        context: stamp.clone(),
        variables: vec![SavedVariable {
            name: "x".into(),
            constant: false,
            kind: kind.into(),
            value,
        }],
        skipped: vec![],
        history: vec![],
        history_dropped: 0,
    };
    let e = Session::restore(rlm.clone(), context.clone(), file("int", "7".into())).unwrap_err();
    assert!(e.to_string().contains("its type is \"int\""), "{e}");
    // A float written without a fraction is still a float.
    let s = Session::restore(rlm.clone(), context.clone(), file("float", 2.into())).unwrap();
    assert_eq!(s.variable_names(), ["x"]);
    let mut bad = file("int", 1.into());
    bad.variables[0].name = "context".into();
    assert!(Session::restore(rlm, context, bad).is_err());
}

#[tokio::test]
async fn variables_over_the_memory_budget_are_not_restored_and_are_listed() {
    let (rlm, _) = rlm_over(MockBackend::scripted([
        "```repl\nlet small = 1;\nlet big = \"\";\nfor i in 0..10000 { big += \"0123456789\"; }\nFINAL(small)\n```",
    ]));
    let mut session = rlm.session(Context::from(""));
    session.ask("q").await.unwrap();
    let file = session.snapshot();
    assert_eq!(file.variables.len(), 2);
    let tight = Rlm::builder(Arc::new(MockBackend::scripted(["FINAL(1)"])))
        .root_model("root")
        .sandbox(SandboxLimits {
            max_memory: 10_000,
            ..SandboxLimits::default()
        })
        .build()
        .unwrap();
    let resumed = Session::restore(tight, Context::from(""), file).unwrap();
    assert_eq!(resumed.variable_names(), ["small"]);
    assert_eq!(resumed.skipped()[0].name, "big");
    assert!(resumed.skipped()[0].why.contains("memory budget"));
}

#[tokio::test]
async fn a_cancelled_question_keeps_the_variables() {
    let (rlm, _) = rlm_over(MockBackend::scripted([
        "```repl\nlet kept = 5;\nFINAL(kept)\n```",
        "```repl\nlet other = 1;\nsleep(30);\n```",
        "```repl\nFINAL(kept + other)\n```",
    ]));
    let mut session = rlm.session(Context::from(""));
    session.ask("q1").await.unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let result = session.ask_cancellable("q2", &cancel).await.unwrap();
    assert_eq!(result.stopped, StopReason::Cancelled);
    assert_eq!(session.variable_names(), ["kept", "other"]);
    let result = session.ask("q3").await.unwrap();
    assert_eq!(result.answer, "6");
}

#[test]
fn ask_blocking_works_without_a_runtime() {
    let (rlm, _) = rlm_over(MockBackend::scripted([
        "```repl\nlet a = 2;\nFINAL(a)\n```",
        "```repl\nFINAL(a * 10)\n```",
    ]));
    let mut session = rlm.session(Context::from(""));
    assert_eq!(session.ask_blocking("q1").unwrap().answer, "2");
    assert_eq!(session.ask_blocking("q2").unwrap().answer, "20");
}

#[test]
fn saving_is_atomic_and_the_file_moves() {
    let dir = std::env::temp_dir().join(format!("rlm-session-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (rlm, _) = rlm_over(MockBackend::scripted([
        "```repl\nlet v = [1, 2];\nFINAL(v)\n```",
    ]));
    let mut session = rlm.session(Context::from("ctx"));
    session.ask_blocking("q").unwrap();
    let path = dir.join("s.json");
    session.save(&path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, [std::ffi::OsString::from("s.json")]);
    let moved = dir.join("elsewhere");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::rename(&path, moved.join("s.json")).unwrap();
    let resumed = Session::load(rlm, Context::from("ctx"), &moved.join("s.json")).unwrap();
    assert_eq!(resumed.variable_names(), ["v"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_history_shown_is_bounded_and_keeps_the_latest() {
    let (rlm, _) = rlm_over(MockBackend::scripted(["FINAL(1)"]));
    let mut session = rlm.session(Context::from(""));
    for i in 0..150 {
        session.history.push(Exchange {
            query: format!("question {i}"),
            answer: "a".repeat(3_000),
            stopped: StopReason::Final,
        });
    }
    let note = session.history_note();
    assert!(
        note.chars().count() <= HISTORY_PROMPT_CHARS + 200,
        "{}",
        note.len()
    );
    assert!(note.contains("question 149"));
    assert!(!note.contains("question 100\n"));
    assert!(note.starts_with('('), "{}", &note[..80]);
}
