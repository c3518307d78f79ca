//! Tests that look inside the REPL: the context is shared, never copied.

use std::sync::Arc;

use rhai::ImmutableString;
use rlm_core::mock::MockBackend;

use super::*;

fn context_string(repl: &Repl) -> ImmutableString {
    repl.context_value()
        .and_then(|v| v.as_immutable_string_ref().ok().map(|s| s.clone()))
        .unwrap_or_default()
}

#[test]
fn the_context_string_is_shared_not_copied() {
    let text = rlm_tests::fixtures::haystack(20_000, 12_345, "the needle is 4217", 3);
    let sub = MockBackend::from_fn(|request| {
        Ok(request
            .last_user_message()
            .unwrap_or_default()
            .len()
            .to_string())
    });
    let mut repl = Repl::builder(Context::from(text.clone()))
        .sub_backend(Arc::new(sub.clone()), "sub")
        .build();
    let before = context_string(&repl);
    let address = before.as_str().as_ptr();
    assert_eq!(before.strong_count(), 2, "the scope's value and our handle");
    drop(before);

    // Read it every way a script does, in several blocks and turns.
    for code in [
        "let n = context.len(); let head = context.sub_string(0, 100); print(n);",
        "let parts = chunk(context, 50000); let hits = grep(context, \"needle\"); print(hits.len());",
        "fn size(text) { text.len() } print(size(context));",
        "let echoed = llm_query(context); let many = llm_batch([context, context]);",
        "let found = context.contains(\"needle\"); let idx = context.index_of(\"needle\");",
    ] {
        let outcome = repl.execute(code);
        assert_eq!(outcome.error, None, "{code}");
    }
    let after = context_string(&repl);
    assert_eq!(after.as_str().as_ptr(), address, "same buffer");
    // The mock sub-model keeps the 3 requests it saw: they hold the context's buffer too
    // (requests share the script's strings).
    assert_eq!(sub.requests().len(), 3);
    assert_eq!(
        after.strong_count(),
        2 + 3,
        "no copy or extra holder left behind"
    );
    assert_eq!(after.as_str(), text);
    drop(after);

    // Assigning it shares the buffer.
    repl.execute("let alias = context;");
    let alias = repl
        .scope
        .get("alias")
        .and_then(|v| v.as_immutable_string_ref().ok().map(|s| s.clone()))
        .unwrap_or_default();
    assert_eq!(alias.as_str().as_ptr(), address);
}

#[test]
fn documents_are_shared_item_by_item() {
    let docs: Vec<String> = (0..50)
        .map(|i| format!("document {i} ").repeat(100))
        .collect();
    let mut repl = Repl::new(Context::from(docs));
    let addresses = |repl: &Repl| -> Vec<usize> {
        repl.context_value()
            .and_then(|v| v.as_array_ref().ok().map(|a| a.clone()))
            .unwrap_or_default()
            .iter()
            .map(|d| {
                d.as_immutable_string_ref()
                    .map(|s| s.as_str().as_ptr() as usize)
                    .unwrap_or(0)
            })
            .collect()
    };
    let before = addresses(&repl);
    let outcome = repl.execute(
        "let total = 0; for (doc, i) in context { total += doc.len(); } \
         let groups = chunk(context, 10); print(total); print(groups.len());",
    );
    assert_eq!(outcome.output, "59000\n5\n");
    assert_eq!(addresses(&repl), before);
}

#[test]
fn limits_are_raised_to_fit_the_context() {
    let limits = SandboxLimits {
        max_string_size: 1000,
        max_array_size: 10,
        ..SandboxLimits::default()
    };
    let docs: Vec<String> = (0..100).map(|_| "x".repeat(100)).collect();
    let mut repl = Repl::builder(Context::from(docs)).limits(limits).build();
    assert!(repl.limits().max_string_size >= 10_000);
    assert!(repl.limits().max_array_size >= 100);
    let outcome = repl.execute("print(context.len()); print(context[99].len());");
    assert_eq!(outcome.output, "100\n100\n");
}

#[test]
fn the_context_length_is_counted_once_and_stays_right() {
    // Large enough to be remembered; multi-byte characters so bytes and characters differ.
    let text = "héllo wörld\n".repeat(20_000);
    let chars = text.chars().count() as INT;
    let mut repl = Repl::new(Context::from(text.clone()));
    for _ in 0..3 {
        let outcome = repl.execute("context.len()");
        assert_eq!(outcome.error, None);
        assert!(
            outcome.output.contains(&chars.to_string()),
            "{}",
            outcome.output
        );
    }
    // A copy made by a script is a different string: it is counted, not looked up.
    let outcome = repl.execute("let c = context + \"é\"; print(c.len()); print(len(c));");
    assert_eq!(outcome.error, None);
    assert_eq!(
        outcome.output.matches(&(chars + 1).to_string()).count(),
        2,
        "{}",
        outcome.output
    );

    // The memo itself: the context's string is remembered once counted; an equal string
    // elsewhere in memory is counted afresh and not remembered.
    let context = ImmutableString::from(text.as_str());
    let lengths = helpers::ContextLengths::of(&Dynamic::from(context.clone()));
    assert_eq!(lengths.len(&text), chars);
    assert!(
        lengths.counted_is_empty(),
        "a look-alike string is not the context"
    );
    assert_eq!(lengths.len(context.as_str()), chars);
    assert!(
        !lengths.counted_is_empty(),
        "the context's count is remembered"
    );
}

#[test]
fn a_zero_limit_stays_no_limit() {
    let limits = SandboxLimits {
        max_string_size: 0,
        max_array_size: 0,
        ..SandboxLimits::default()
    };
    let docs: Vec<String> = (0..100).map(|_| "x".repeat(100)).collect();
    let mut repl = Repl::builder(Context::from(docs)).limits(limits).build();
    assert_eq!(repl.limits().max_string_size, 0);
    assert_eq!(repl.limits().max_array_size, 0);
    let outcome = repl.execute("let s = context[0]; for i in 0..10 { s += s; } s.len()");
    assert_eq!(outcome.output, "=> 102400\n", "{:?}", outcome.error);
}

#[test]
fn a_shared_context_gives_every_repl_the_same_bytes() {
    let text = rlm_tests::fixtures::haystack(2_000, 1_234, "the needle is 4217", 5);
    let docs = vec![text.clone(), "second".to_owned()];
    for context in [Context::from(text.clone()), Context::from(docs)] {
        let shared = crate::SharedContext::new(context.clone());
        assert_eq!(shared.info(), &context.info());
        let first = Repl::new(Context::from(shared.clone()));
        let second = Repl::new(Context::Shared(shared.clone()));
        assert_eq!(first.context_info(), second.context_info());
        let address = |repl: &Repl| {
            let value = repl.context_value().cloned().unwrap_or_default();
            if let Ok(s) = value.as_immutable_string_ref() {
                return s.as_ptr() as usize;
            }
            let items = value.into_array().unwrap_or_default();
            let item = items[0]
                .as_immutable_string_ref()
                .map(|s| s.as_ptr() as usize);
            item.unwrap_or_default()
        };
        assert_ne!(address(&first), 0);
        assert_eq!(
            address(&first),
            address(&second),
            "the same bytes, not a copy"
        );
        let mut repl = Repl::new(Context::from(shared));
        let outcome = repl.execute("print(context.len() > 0);");
        assert!(outcome.output.contains("true"), "{outcome:?}");
    }
}

/// The helpers are shared by every REPL of the process, yet each checks against its own
/// REPL's limits, whichever REPL ran last and on whichever thread.
#[test]
fn shared_helpers_check_each_repls_own_limits() {
    let small = SandboxLimits {
        max_array_size: 50,
        max_string_size: 1_000,
        ..SandboxLimits::default()
    };
    let mut tight = Repl::builder(Context::from("x")).limits(small).build();
    let mut roomy = Repl::new(Context::from("x"));
    for _ in 0..2 {
        let mut error = |code: &str| tight.execute(code).error.unwrap_or_default();
        assert!(error("range(100).len()").contains("array limit (50)"));
        assert!(error("let s = \"a\"; s.pad(5000, 'b'); s.len()").contains("Length of string"));
        let split = error("let t = \"\"; for i in 0..60 { t += \"a \"; } split(t).len()");
        assert!(split.contains("Size of array from split"), "{split}");
        let allowed =
            roomy.execute("let r = range(100); let s = \"a\"; s.pad(5000, 'b'); r.len() + s.len()");
        assert_eq!(allowed.output, "=> 5100\n", "{allowed:?}");
        let within = tight.execute("range(40).len()");
        assert_eq!(within.output, "=> 40\n", "{within:?}");
    }
}
