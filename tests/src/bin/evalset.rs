//! Offline evaluation sets for `rlm batch`: generated job files whose answers are exact, no
//! download needed.
//!
//! ```text
//! evalset niah   [--jobs N] [--context-bytes B] [--seed S] [--dir DIR]
//! evalset oolong [--jobs N] [--records R] [--seed S] [--dir DIR]
//! ```
//!
//! - `niah`: S-NIAH-style needle tasks. Each job's context is `B` bytes of word noise with one
//!   sentence, `The special magic number for KEY is NNNNNNN.`, at a seeded depth; the query
//!   asks for KEY's number; `expected` is the number.
//! - `oolong`: OOLONG-like aggregation. Each job's context is `R` dated records
//!   (`2024-03-05 | user u07 | text`), each text written from the words of one of six
//!   categories (billing, shipping, account, product, refund, praise) without naming it, so a
//!   model must classify every record (with sub-calls) and aggregate; the questions rotate
//!   through counts of a category, the most frequent category, a category per user, and
//!   counts per month. `expected` is the exact answer (a number or a category name).
//!
//! The job file goes to stdout (JSON Lines, one job per line). With `--dir DIR` each
//! context is written to `DIR/ID.txt` and the job names it with `context_path` (for long
//! contexts), otherwise it is inline. The same seed gives the same file on every machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use rlm_tests::fixtures::{Rng, filler_line};
use serde_json::{Value, json};

const HELP: &str = "\
evalset: offline evaluation sets for rlm batch (JSON Lines on stdout)

usage: evalset niah   [--jobs N] [--context-bytes B] [--seed S] [--dir DIR]
       evalset oolong [--jobs N] [--records R] [--seed S] [--dir DIR]

  --jobs N           jobs to write (default 50)
  --context-bytes B  niah: bytes of each haystack (default 100000)
  --records R        oolong: records in each context (default 200)
  --seed S           seed (default 1)
  --dir DIR          write each context to DIR/ID.txt and name it with context_path";

struct Args {
    kind: String,
    jobs: usize,
    context_bytes: usize,
    records: usize,
    seed: u64,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let kind = it.next().ok_or("niah or oolong?")?;
    if kind == "--help" || kind == "-h" {
        return Err(String::new());
    }
    let mut args = Args {
        kind,
        jobs: 50,
        context_bytes: 100_000,
        records: 200,
        seed: 1,
        dir: None,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--jobs" => args.jobs = number(value()?)? as usize,
            "--context-bytes" => args.context_bytes = number(value()?)? as usize,
            "--records" => args.records = number(value()?)? as usize,
            "--seed" => args.seed = number(value()?)?,
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// One needle job: (context, query, expected).
fn niah(rng: &mut Rng, bytes: usize) -> (String, String, Value) {
    let key = format!(
        "{}-{}",
        ["amber", "cobalt", "harbor", "lantern", "summit", "velvet"][rng.below(6) as usize],
        rng.below(1000)
    );
    let number = 1_000_000 + rng.below(9_000_000);
    let needle = format!("The special magic number for {key} is {number}.");
    let mut lines = Vec::new();
    let mut size = 0;
    while size < bytes.saturating_sub(needle.len()) {
        let line = filler_line(rng, 80);
        size += line.len() + 1;
        lines.push(line);
    }
    let at = rng.below(lines.len() as u64 + 1) as usize;
    lines.insert(at, needle);
    let query = format!(
        "What is the special magic number for {key} mentioned in the context? Answer with the \
         number only."
    );
    (lines.join("\n"), query, Value::from(number.to_string()))
}

const CATEGORIES: [(&str, [&str; 6]); 6] = [
    (
        "billing",
        [
            "invoice",
            "charged twice",
            "payment",
            "card declined",
            "billing cycle",
            "receipt",
        ],
    ),
    (
        "shipping",
        [
            "package",
            "courier",
            "tracking number",
            "delivery date",
            "parcel",
            "warehouse",
        ],
    ),
    (
        "account",
        [
            "password",
            "login",
            "two-factor",
            "username",
            "locked out",
            "profile",
        ],
    ),
    (
        "product",
        [
            "battery", "screen", "button", "firmware", "charger", "sensor",
        ],
    ),
    (
        "refund",
        [
            "money back",
            "return label",
            "refund",
            "reimburse",
            "credit back",
            "cancel my order",
        ],
    ),
    (
        "praise",
        [
            "thank you",
            "excellent",
            "love it",
            "great service",
            "wonderful",
            "five stars",
        ],
    ),
];

/// One aggregation job: (context, query, expected).
fn oolong(rng: &mut Rng, records: usize, index: usize) -> (String, String, Value) {
    let users = 12;
    let mut lines = Vec::with_capacity(records);
    let mut rows = Vec::with_capacity(records);
    for _ in 0..records {
        let category = rng.below(CATEGORIES.len() as u64) as usize;
        let user = rng.below(users) as usize;
        let month = 1 + rng.below(6) as usize;
        let day = 1 + rng.below(28);
        let (_, words) = CATEGORIES[category];
        let text = format!(
            "{} {} {}",
            filler_line(rng, 20),
            words[rng.below(words.len() as u64) as usize],
            filler_line(rng, 20)
        );
        lines.push(format!(
            "2024-{month:02}-{day:02} | user u{user:02} | {text}"
        ));
        rows.push((category, user, month));
    }
    let count = |f: &dyn Fn(&(usize, usize, usize)) -> bool| rows.iter().filter(|r| f(r)).count();
    let names = CATEGORIES.map(|(name, _)| name).join(", ");
    let preamble = format!(
        "Each line of the context is a customer message: date | user | text. Every message \
         belongs to exactly one of these categories: {names}."
    );
    let category = rng.below(CATEGORIES.len() as u64) as usize;
    let name = CATEGORIES[category].0;
    let (question, expected) = match index % 4 {
        0 => (
            format!("How many messages are in the category {name}? Answer with the number only."),
            Value::from(count(&|r| r.0 == category)),
        ),
        1 => {
            let mut tally = [0usize; CATEGORIES.len()];
            for row in &rows {
                tally[row.0] += 1;
            }
            let best = *tally.iter().max().unwrap_or(&0);
            // A tie has no single answer: ask about the least frequent count instead.
            if tally.iter().filter(|&&n| n == best).count() == 1 {
                let winner = tally.iter().position(|&n| n == best).unwrap_or(0);
                (
                    "Which category has the most messages? Answer with the category name only."
                        .to_owned(),
                    Value::from(CATEGORIES[winner].0),
                )
            } else {
                (
                    format!(
                        "How many messages are in the category {name}? Answer with the number \
                         only."
                    ),
                    Value::from(count(&|r| r.0 == category)),
                )
            }
        }
        2 => {
            let user = rng.below(users) as usize;
            (
                format!(
                    "How many messages from user u{user:02} are in the category {name}? Answer \
                     with the number only."
                ),
                Value::from(count(&|r| r.1 == user && r.0 == category)),
            )
        }
        _ => {
            let mut by_month: BTreeMap<usize, usize> = BTreeMap::new();
            for row in rows.iter().filter(|r| r.0 == category) {
                *by_month.entry(row.2).or_default() += 1;
            }
            let month = 1 + rng.below(6) as usize;
            (
                format!(
                    "How many messages in the category {name} were sent in 2024-{month:02}? \
                     Answer with the number only."
                ),
                Value::from(by_month.get(&month).copied().unwrap_or(0)),
            )
        }
    };
    (lines.join("\n"), format!("{preamble} {question}"), expected)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{HELP}");
            return std::process::ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    if !["niah", "oolong"].contains(&args.kind.as_str()) {
        eprintln!("error: unknown set {:?}\n{HELP}", args.kind);
        return std::process::ExitCode::from(2);
    }
    if let Some(dir) = &args.dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: cannot create {}: {e}", dir.display());
            return std::process::ExitCode::from(4);
        }
    }
    let mut rng = Rng::new(args.seed);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for index in 0..args.jobs {
        let id = format!("{}-{index:05}", args.kind);
        let (context, query, expected) = if args.kind == "niah" {
            niah(&mut rng, args.context_bytes)
        } else {
            oolong(&mut rng, args.records, index)
        };
        let mut job = json!({"id": id, "query": query, "expected": expected});
        match &args.dir {
            Some(dir) => {
                let path = dir.join(format!("{id}.txt"));
                if let Err(e) = std::fs::write(&path, &context) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return std::process::ExitCode::from(4);
                }
                job["context_path"] = Value::from(path.to_string_lossy().into_owned());
            }
            None => job["context"] = Value::from(context),
        }
        if writeln!(out, "{job}").is_err() {
            return std::process::ExitCode::from(4);
        }
    }
    if out.flush().is_err() {
        return std::process::ExitCode::from(4);
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needles_are_in_their_haystacks_and_answers_are_exact() {
        let mut rng = Rng::new(7);
        for _ in 0..20 {
            let (context, query, expected) = niah(&mut rng, 5_000);
            let number = expected.as_str().unwrap_or_default().to_owned();
            let key = query
                .split("for ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .unwrap_or("");
            assert!(context.contains(&format!("The special magic number for {key} is {number}.")));
            // The only digits of the haystack are the needle's and its key's.
            let digits: String = context.chars().filter(char::is_ascii_digit).collect();
            assert!(digits.ends_with(&number), "{digits}");
            assert!(context.len() >= 4_900);
        }
        let mut rng = Rng::new(7);
        for index in 0..8 {
            let (context, _, expected) = oolong(&mut rng, 50, index);
            assert_eq!(context.lines().count(), 50);
            assert!(expected.is_number() || expected.is_string());
        }
    }
}
