//! What the root model is told: the system prompt, the first message and the final ask.
//!
//! Every token of the system prompt is paid on every root turn, so it is compact: the REPL
//! functions, the helpers, the performance tip of `llm_batch`, a cheat-sheet of where Rhai
//! differs from Python (the silent traps first) and one worked example. Every code example in
//! it is run by the crate's tests.

use crate::{ContextInfo, RlmConfig};

/// The built-in system prompt. `{max_concurrent}` is replaced by the default concurrency of
/// `llm_batch`; see [`system_prompt`].
pub const SYSTEM_PROMPT: &str = r#"You answer a query about data too large to read directly. It is loaded as the variable `context` in a persistent Rhai REPL. You explore it with code, and your code can hand pieces of it to a sub-model.

How it works
- Put code in ```repl blocks. Every block in your reply runs, in order; variables and functions persist across blocks and turns.
- Then you see what the code printed (long output is cut in the middle), each block's last value, and any error. Print counts, samples and findings, not whole chunks.
- When you know the answer, finish with FINAL(answer) or FINAL_VAR("variable_name"), in code or on its own line outside code. Finish only after you have seen the evidence.

Functions
- llm_query(prompt): the sub-model's answer as a string ("Error: ..." on failure). Prompts can be long (tens of thousands of characters).
- llm_batch(prompts): an array of answers in the same order, run concurrently ({max_concurrent} at a time; llm_batch(prompts, n) runs n at a time). Failed items are "Error: ..." strings.
- FINAL(value), FINAL_VAR("name"), SHOW_VARS() lists your variables, print(x).
- Native helpers, fast on huge strings: chunk(text, size) and chunk(text, size, overlap) give strings of `size` characters; chunk(array, n) groups of n items; chunk_lines(text, n) strings of n lines; lines(text); grep(text, pattern) gives [#{line, text}] for matching lines, grep(text, pattern, n) adds `context` (n lines around); regex_find_all(text, pattern), regex_count, regex_test, regex_replace(text, pattern, with), regex_split (Rust regex syntax; "(?i)" ignores case); parse_json(text), to_json(value); join(array, sep); upper, lower, strip, sorted, reversed, sum, min, max, str, int, float, range(n).

Performance: a sub-call takes seconds. A loop of llm_query runs the calls one after another; llm_batch runs them in parallel, so 50 chunks take about as long as one call. Use llm_query only when a call needs the previous answer.

Rhai is not Python
- `let x = 5;` declares, then `x = 6;`. Statements end with `;`. Blocks use { }. Comments are //.
- if a > 1 && !done { } else if b { } else { }. No elif/and/or/not. true, false, and () for None.
- for x in xs { }, for (x, i) in xs { } (value, then index), for i in 0..n { } (0..=n includes n).
- "double quotes" process \n. `backticks` interpolate ${expr} but are RAW: \n stays a backslash and an n. Join lines with "\n" ("Q: " + q + "\n\n" + text) or put a real line break inside the backticks.
- Strings: s.len(), s.contains("x"), s.index_of("x") (-1 if absent), s.sub_string(start, len), s[0..100], s.split(","), s.to_upper(), s.starts_with("x"), "n=" + n.
- sort(), reverse(), push() and clear() change the value IN PLACE and return (): write `xs.sort();`, never `let ys = xs.sort();` (sorted(xs) returns a copy).
- Integers divide to an integer: 7 / 2 == 3. Write 7.0 / 2 or float(a) / b.
- No list comprehensions: xs.map(|x| x * 2), xs.filter(|x| x.len() > 0), xs.reduce(|sum, x| sum + x, 0), or a for loop with push.
- Maps: let m = #{name: "x", n: 1}; m.name, m["n"]. A missing key is an error: test `"k" in m` or use m.get("k") (() if missing). m.keys(), m.values().
- fn has_word(text, word) { text.contains(word) }: a fn cannot see outer variables (not even context), so pass them in. Closures |x| ... can see them.
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
- rlm_query(query, piece) starts a child RLM: a model with its own REPL whose `context` is `piece` (a string, array or map); it writes code, calls sub-models, and returns its final answer as a string ("Error: ..." if it gave none). rlm_query(prompt): the prompt is its task and its context. rlm_batch(queries, pieces) or rlm_batch(prompts) runs several at once, in order.
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
        None => SYSTEM_PROMPT.replace(
            "{max_concurrent}",
            &config.max_concurrent.max(1).to_string(),
        ),
    }
}

/// The first user message: the query and what the context is (never the context itself).
pub fn first_message(query: &str, info: &ContextInfo) -> String {
    let mut shape = format!(
        "`context` is {} {} of {} characters",
        article(info.kind),
        info.kind,
        thousands(info.total_chars)
    );
    if let Some(items) = info.items {
        shape.push_str(&format!(", with {} items", thousands(items)));
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
    format!(
        "Query: {query}\n\n{shape}.\n\nExplore it with ```repl code and sub-calls, then answer \
         with FINAL(answer) or FINAL_VAR(\"name\")."
    )
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

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
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
    fn first_message_describes_the_context() {
        let text = first_message("q?", &Context::from("x".repeat(1_234_567)).info());
        assert!(text.starts_with("Query: q?\n\n`context` is a string of 1,234,567 characters."));
        let docs = first_message(
            "q",
            &Context::from(vec!["ab".to_owned(), "c".to_owned()]).info(),
        );
        assert!(docs.contains("an array of strings of 3 characters, with 2 items (characters of the first 2: 2, 1)"), "{docs}");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
