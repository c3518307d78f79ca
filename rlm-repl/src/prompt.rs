//! What the root model is told: the system prompt, the first message and the final ask.
//!
//! Every token of the system prompt is paid on every root turn, so it is compact (under
//! 4,700 characters, leaving room for additions up to 5,400): how answers are accepted, the
//! REPL functions and helpers, the performance tip of `llm_batch`, a few lines of strategy, a
//! cheat-sheet of where Rhai differs from Python (the silent traps first) and one worked
//! example. Every code example in it is run by the crate's tests.

use crate::words::{count_of, thousands};
use crate::{ContextInfo, RlmConfig};

/// The built-in system prompt. `{max_concurrent}` is replaced by the default concurrency of
/// `llm_batch`; see [`system_prompt`].
pub const SYSTEM_PROMPT: &str = r#"You answer a query about data too large to read directly. It is the variable `context` in a persistent Rhai REPL: explore it with code, and hand pieces of it to sub-models.

How it works
- Write code in ```repl blocks (~~~ fences work too). Blocks run in order; variables persist across blocks and turns. After a failed block, the later blocks of that reply do not run.
- Then you see what the code printed (long output is cut in the middle), each block's last value, and errors with hints. Print counts, samples and findings, not whole chunks.
- Finish with FINAL(answer) or FINAL_VAR("name") only after you have seen the output your answer rests on. Called in code, they end the run when the block succeeds; a FINAL(...) line outside code counts only in a reply without code.

Functions
- llm_query(prompt): one sub-model answer as a string ("Error: ..." on failure). Prompts can be long.
- llm_batch(prompts): the answers in the same order, run concurrently ({max_concurrent} at a time; llm_batch(prompts, n): n at a time); failed items are "Error: ..." strings. A loop of llm_query runs one call at a time; llm_batch runs 50 in about the time of one.
- llm_query_json(prompt, schema), llm_batch_json(prompts, schema[, n]): answers parsed and valid for schema, a JSON Schema map (#{type: "object", properties: #{n: #{type: "integer"}}}); else "Error: ...".
- print(x), SHOW_VARS() lists your variables.
- Text (native, fast on huge strings): chunk(text, size[, overlap]) gives strings of `size` characters; chunk_lines(text, n) strings of n whole lines; chunk(array, n) groups of n items; lines(text); grep(text, pattern) gives [#{line, text}] for matching lines (grep(text, pattern, n) adds `context`, n lines around); regex_find_all(text, pattern) the whole matches; regex_captures(text, pattern) [[group1, group2, ...], ...], one per match; regex_count, regex_test, regex_replace(text, pattern, with), regex_split (Rust regex syntax; "(?i)" ignores case); parse_json(text), to_json(value); join(array, sep); upper, lower, strip, str, int, float, range(n).
- Arrays and numbers: sum, min, max, sorted, reversed; sort_by(xs, |x| x.price) sorts in place by a key, sorted_by(xs, |x| x.price) returns a sorted copy, a third argument true sorts descending; fmt(x, 2) is the text "23.60"; round(x, 2).

Strategy
- Count, sum and search exactly in code when the text allows (regex_count, grep, split); use sub-models for meaning.
- Ask sub-models for terse fixed-format answers ("one number", "YES or NO", "NONE if absent") and parse them in code.
- A few large chunks beat many small ones.

Rhai is not Python
- `let x = 5;` declares, then `x = 6;`. Statements end with `;`. Blocks use { }. Comments are //, so `a // b` is a.
- if a > 1 && !done { } else if b { } else { }. No elif/and/or/not. true, false, and () for None.
- for x in xs { }, for (x, i) in xs { } (value, then index), for i in 0..n { }. No list comprehensions: xs.map(|x| x * 2), xs.filter(|x| x > 0), or a for loop with push.
- "double quotes" process \n. `backticks` interpolate ${expr} but are RAW: \n stays a backslash and an n.
- Strings: s.len(), s.contains("x"), s.index_of("x") (-1 if absent), s.sub_string(start, len), s[0..100], s.split(","), s.starts_with("x"), "n=" + n.
- sort(), reverse(), push() and clear() change the value IN PLACE and return (): write `xs.sort();`, never `let ys = xs.sort();`.
- Integers divide to an integer: 7 / 2 == 3. Write 7.0 / 2 or float(a) / b.
- Maps: let m = #{name: "x", n: 1}; m.name, m["n"], m.keys(), m.values(). Keys are strings: m[str(5)]. A missing key is an error: m.get(k) gives () and `??` a default. Count: m[k] = (m.get(k) ?? 0) + 1; Keys stay sorted (not in insertion order): rank with sorted_by(m.keys(), |k| m[k], true).
- A closure must not use the array or map its method is called on (xs.filter(|x| x < xs.len()) fails): compute first, `let n = xs.len();`.
- fn f(text) { ... } cannot see outer variables (not even context): pass them in. Closures |x| ... can.
- try { ... } catch (err) { print(err); }

Example: search a long text in parallel.
```repl
let chunks = chunk(context, 50000);
print(`${chunks.len()} chunks`);
let prompts = chunks.map(|c| "Quote every sentence about the lighthouse keeper, or answer NONE.\n\n" + c);
let answers = llm_batch(prompts);
let found = answers.filter(|a| !a.contains("NONE") && !a.starts_with("Error"));
print(join(found, "\n---\n"));
```
Next turn, with the evidence printed:
```repl
let answer = llm_query("Using these excerpts, who was the lighthouse keeper?\n\n" + join(found, "\n---\n"));
FINAL(answer);
```"#;

/// What the system prompt adds when code may start child runs (`--max-depth` above 1). Its
/// example is run by the crate's tests.
pub const RECURSION_PROMPT: &str = r#"

Child runs
- rlm_query(query, piece) starts a child RLM: a model with its own REPL whose `context` is `piece`; it writes code, calls sub-models, and returns its final answer as a string ("Error: ..." if it gave none). rlm_query(prompt): the prompt is its task and its context. rlm_batch(queries, pieces) or rlm_batch(prompts) runs several at once, in order.
- Use a child for a sub-task that itself needs code over a large piece (counting, cross-referencing, searching many parts); use llm_query for a question one call can answer from text that fits in a prompt. A child costs several calls.
```repl
let parts = chunk(context, 2000000);
let counts = rlm_batch(parts.map(|p| "How many lines mention a disk error? Answer with the number only."), parts);
print(counts);
```"#;

/// The system prompt for `config`: its override if set, else [`SYSTEM_PROMPT`] with the
/// default concurrency of `llm_batch` filled in.
pub fn system_prompt(config: &RlmConfig) -> String {
    match &config.system_prompt {
        Some(custom) => custom.clone(),
        None => default_system_prompt(config.max_concurrent.max(1)),
    }
}

/// [`SYSTEM_PROMPT`] for a concurrency of `max_concurrent`, written once and copied for
/// every run after (the runs of a batch or a server share their settings).
fn default_system_prompt(max_concurrent: usize) -> String {
    static LAST: std::sync::Mutex<Option<(usize, String)>> = std::sync::Mutex::new(None);
    let mut last = crate::sync::lock(&LAST);
    match &*last {
        Some((n, prompt)) if *n == max_concurrent => prompt.clone(),
        _ => {
            let prompt = SYSTEM_PROMPT.replace("{max_concurrent}", &max_concurrent.to_string());
            *last = Some((max_concurrent, prompt.clone()));
            prompt
        }
    }
}

/// The first user message: the query and what the context is: its type and size, a map's
/// keys with their types, and a marked preview of its start (never the whole context unless
/// it is that short).
pub fn first_message(query: &str, info: &ContextInfo) -> String {
    let mut shape = format!(
        "`context` is {} {} of {}",
        article(info.kind),
        info.kind,
        count_of(info.total_chars, "character")
    );
    if let Some(lines) = info.lines {
        let plural = if lines == 1 { "" } else { "s" };
        shape.push_str(&format!(" ({} line{plural})", thousands(lines)));
    }
    if let Some(items) = info.items {
        shape.push_str(&format!(", with {}", count_of(items, "item")));
        if !info.first_item_chars.is_empty() {
            let sizes: Vec<String> = info
                .first_item_chars
                .iter()
                .map(|n| thousands(*n))
                .collect();
            shape.push_str(&format!(
                " (characters of the first {}: {})",
                sizes.len(),
                sizes.join(", ")
            ));
        }
    }
    shape.push('.');
    if !info.keys.is_empty() {
        let whose = if info.kind.starts_with("map") {
            "Its keys"
        } else {
            "The first item is a map; its keys"
        };
        shape.push_str(&format!(
            "\n{whose} (values' types): {}.",
            info.keys.join(", ")
        ));
    }
    for note in &info.notes {
        shape.push_str(&format!("\nNote: {note}."));
    }
    if !info.preview.is_empty() {
        let what = if info.items.is_some() && info.kind.starts_with("array") {
            "the first items, one a line, as JSON".to_owned()
        } else if info.preview.chars().count() >= info.total_chars {
            "the whole context".to_owned()
        } else {
            format!(
                "its first {} characters, not the whole context",
                info.preview.chars().count()
            )
        };
        shape.push_str(&format!(
            "\n--- preview ({what}) ---\n{}\n--- end of preview ---",
            info.preview
        ));
    }
    format!(
        "Query: {query}\n\n{shape}\n\nExplore it with ```repl code and sub-calls; finish with \
         FINAL(answer) or FINAL_VAR(\"name\") once you have seen the evidence."
    )
}

/// The first message of a follow-up question in a session: the earlier questions and their
/// answers (`history`, already bounded), what the REPL still holds (`vars`, as `SHOW_VARS()`
/// lists it), variables removed for the memory budget (`notice`), then the usual `first`
/// message.
pub(crate) fn session_message(
    history: &str,
    vars: &str,
    notice: Option<String>,
    first: &str,
) -> String {
    let mut out = String::from(
        "This query continues a session. The REPL is the one the earlier queries used: \
         `context` is the same value (not reloaded) and every variable and function they \
         defined is still there. Reuse what they computed instead of computing it again.\n",
    );
    if !history.is_empty() {
        out.push_str(&format!(
            "\n--- earlier queries and answers, oldest first ---\n{}\n--- end of earlier queries ---\n",
            history.trim_end()
        ));
    }
    out.push_str(&format!(
        "\nVariables now defined (SHOW_VARS()):\n{}\n",
        vars.trim_end()
    ));
    if let Some(notice) = notice {
        out.push_str(&format!("Note: {}\n", notice.trim_end()));
    }
    out.push('\n');
    out.push_str(first);
    out
}

/// The last message when the run is out of turns or sub-calls: asks for the best answer now.
pub(crate) fn final_ask(reason: &str) -> String {
    format!(
        "{reason} No more code will run. Reply now with your best final answer to the query, \
         on one line: FINAL(your answer)."
    )
}

fn article(kind: &str) -> &'static str {
    match kind.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;

    #[test]
    fn renders_the_concurrency_and_respects_overrides() {
        let config = RlmConfig {
            max_concurrent: 7,
            ..RlmConfig::default()
        };
        let prompt = system_prompt(&config);
        assert!(prompt.contains("(7 at a time;"));
        assert!(!prompt.contains("{max_concurrent}"));
        let custom = RlmConfig {
            system_prompt: Some("be brief".into()),
            ..RlmConfig::default()
        };
        assert_eq!(system_prompt(&custom), "be brief");
    }

    #[test]
    fn counts_in_the_first_message_are_singular_for_one() {
        let one = Context::from(vec!["x".to_owned()]).info();
        let text = first_message("q", &one);
        assert!(text.contains("with 1 item"), "{text}");
        assert!(!text.contains("1 items"), "{text}");
        let char = first_message("q", &Context::from("x").info());
        assert!(char.contains("of 1 character"), "{char}");
        assert!(!char.contains("1 characters"), "{char}");
        assert_eq!(count_of(2, "entry"), "2 entries");
        assert_eq!(count_of(1_500, "key"), "1,500 keys");
    }

    #[test]
    fn the_prompt_stays_within_its_budget() {
        // At most 5,400 characters with later additions (recursion, ...); this
        // leaves them room. (4,500 and 5,200 before the JSON sub-calls' line.)
        let prompt = system_prompt(&RlmConfig::default());
        assert!(
            prompt.chars().count() <= 4_700,
            "{}",
            prompt.chars().count()
        );
        // FINAL's rules are stated once.
        assert_eq!(prompt.matches("FINAL_VAR(").count(), 1);
    }

    /// Each inline example of the prompt (quoted exactly) and code that runs it, with what it
    /// must print. The two worked examples run in tests/rlm.rs.
    const INLINE_EXAMPLES: &[(&str, &str, &str)] = &[
        (
            "#{type: \"object\", properties: #{n: #{type: \"integer\"}}}",
            "let schema = #{type: \"object\", properties: #{n: #{type: \"integer\"}}};\nprint(to_json(schema));",
            "{\"properties\":{\"n\":{\"type\":\"integer\"}},\"type\":\"object\"}\n",
        ),
        (
            "xs.map(|x| x * 2), xs.filter(|x| x > 0)",
            "let xs = [-1, 2];\nprint(xs.map(|x| x * 2)); print(xs.filter(|x| x > 0));",
            "[-2, 4]\n[2]\n",
        ),
        (
            "for (x, i) in xs { } (value, then index), for i in 0..n { }",
            "let xs = [\"a\"]; let n = 2;\nfor (x, i) in xs { print(`${x}${i}`); } for i in 0..n { print(i); }",
            "a0\n0\n1\n",
        ),
        (
            "s.len(), s.contains(\"x\"), s.index_of(\"x\") (-1 if absent), s.sub_string(start, len), s[0..100], s.split(\",\"), s.starts_with(\"x\"), \"n=\" + n",
            "let s = \"ax,b\"; let n = 1; let start = 1; let len = 2;\nprint([s.len(), s.contains(\"x\"), s.index_of(\"x\"), s.sub_string(start, len), s[0..100], s.split(\",\"), s.starts_with(\"x\"), \"n=\" + n]);",
            "[4, true, 1, \"x,\", \"ax,b\", [\"ax\", \"b\"], false, \"n=1\"]\n",
        ),
        (
            "7 / 2 == 3. Write 7.0 / 2 or float(a) / b",
            "let a = 7; let b = 2;\nprint(7.0 / 2); print(float(a) / b);",
            "3.5\n3.5\n",
        ),
        (
            "let m = #{name: \"x\", n: 1}; m.name, m[\"n\"], m.keys(), m.values(). Keys are strings: m[str(5)].",
            "let m = #{name: \"x\", n: 1};\nprint([m.name, m[\"n\"], m.keys().len(), m.values().len()]); m[str(5)] = 1; print(m[\"5\"]);",
            "[\"x\", 1, 2, 2]\n1\n",
        ),
        (
            "m.get(k) gives () and `??` a default. Count: m[k] = (m.get(k) ?? 0) + 1;",
            "let m = #{}; let k = \"w\";\nm[k] = (m.get(k) ?? 0) + 1; m[k] = (m.get(k) ?? 0) + 1; print(m[k]);",
            "2\n",
        ),
        (
            "(xs.filter(|x| x < xs.len()) fails): compute first, `let n = xs.len();`",
            "let xs = [1, 5];\nlet n = xs.len();\nprint(xs.filter(|x| x < n));",
            "[1]\n",
        ),
        (
            "sort_by(xs, |x| x.price) sorts in place by a key, sorted_by(xs, |x| x.price) returns a sorted copy, a third argument true sorts descending; fmt(x, 2) is the text \"23.60\"; round(x, 2).",
            "let xs = [#{price: 2.5}, #{price: 1}]; let x = 23.6;\nlet ys = sorted_by(xs, |x| x.price, true); sort_by(xs, |x| x.price);\nprint([xs[0].price, ys[0].price, fmt(x, 2), round(x, 2)]);",
            "[1, 2.5, \"23.60\", 23.6]\n",
        ),
        (
            "regex_find_all(text, pattern) the whole matches; regex_captures(text, pattern) [[group1, group2, ...], ...]",
            "let text = \"a=1 b=2\";\nprint(regex_find_all(text, \"\\\\w=\\\\d\")); print(regex_captures(text, \"(\\\\w)=(\\\\d)\"));",
            "[\"a=1\", \"b=2\"]\n[[\"a\", \"1\"], [\"b\", \"2\"]]\n",
        ),
        (
            "chunk_lines(text, n) strings of n whole lines",
            "let text = \"a\\nb\\nc\"; let n = 2;\nprint(chunk_lines(text, n).len());",
            "2\n",
        ),
        (
            "grep(text, pattern) gives [#{line, text}]",
            "let text = \"x\\nfind me\"; let pattern = \"find\";\nlet hit = grep(text, pattern)[0]; print(`${hit.line}: ${hit.text}`);",
            "2: find me\n",
        ),
        (
            "Keys stay sorted (not in insertion order): rank with sorted_by(m.keys(), |k| m[k], true).",
            "let m = #{zeta: 3, alpha: 1, mid: 2};\nprint(m.keys()); print(sorted_by(m.keys(), |k| m[k], true));",
            "[\"alpha\", \"mid\", \"zeta\"]\n[\"zeta\", \"mid\", \"alpha\"]\n",
        ),
        (
            "try { ... } catch (err) { print(err); }",
            "try { throw \"boom\"; } catch (err) { print(err); }",
            "boom\n",
        ),
        (
            "fn f(text) { ... } cannot see outer variables (not even context): pass them in.",
            "fn f(text) { text.len() }\nprint(f(context));",
            "3\n",
        ),
    ];

    #[test]
    fn every_inline_example_runs() {
        for (quoted, code, printed) in INLINE_EXAMPLES {
            assert!(
                SYSTEM_PROMPT.contains(quoted),
                "not in the prompt: {quoted}"
            );
            let mut repl = crate::Repl::new(Context::from("abc"));
            let outcome = repl.execute(code);
            assert_eq!(outcome.error, None, "{code}\n{}", outcome.output);
            assert_eq!(outcome.output, *printed, "{code}");
        }
    }

    #[test]
    fn first_message_describes_the_context() {
        let text = first_message("q?", &Context::from("x".repeat(1_234_567)).info());
        assert!(
            text.starts_with(
                "Query: q?\n\n`context` is a string of 1,234,567 characters (1 line).\n--- \
             preview (its first 200 characters, not the whole context) ---\nxxx"
            ),
            "{text}"
        );
        assert!(text.contains(&format!("{}\n--- end of preview ---", "x".repeat(200))));
        assert!(!text.contains(&"x".repeat(201)));
        let short = first_message("q", &Context::from("a\nb\n").info());
        assert!(
            short.contains("(2 lines).\n--- preview (the whole context) ---\na\nb\n\n--- end"),
            "{short}"
        );
        let json = first_message(
            "q",
            &Context::from(serde_json::json!({"season": 2024, "players": [{"n": 1}], "name": "x", "avg": 1.5, "none": null})).info(),
        );
        assert!(
            json.contains("Its keys (values' types): avg (float), name (string, 1 char), none (()), players (array, 1 item), season (int)."),
            "{json}"
        );
        let rows = first_message(
            "q",
            &Context::from(serde_json::json!([{"customer": "Acme", "amount": 12.5}, {"customer": "Hooli", "amount": 3.0}])).info(),
        );
        assert!(rows.contains("The first item is a map; its keys (values' types): amount (float), customer (string, 4 chars)."), "{rows}");
        assert!(rows.contains("--- preview (the first items, one a line, as JSON) ---\n[0] {\"amount\":12.5,\"customer\":\"Acme\"}\n[1] {"), "{rows}");
        let long: Vec<String> = (0..50)
            .map(|i| format!("document {i} {}", "word ".repeat(30)))
            .collect();
        let docs_preview = first_message("q", &Context::from(long).info());
        let shown = docs_preview.split("--- preview").nth(1).unwrap_or_default();
        assert!(shown.contains("[0] \"document 0 word"), "{docs_preview}");
        assert!(shown.chars().count() < 400, "{docs_preview}");
        let docs = first_message(
            "q",
            &Context::from(vec!["ab".to_owned(), "c".to_owned()]).info(),
        );
        assert!(docs.contains("an array of strings of 3 characters, with 2 items (characters of the first 2: 2, 1)"), "{docs}");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
