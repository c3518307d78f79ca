//! Drivability: can a model that writes Rhai the way models do (Python habits included) get
//! RLM tasks right in this REPL, and when it cannot, does it find out?
//!
//! Each task has a data generator, a query, an answer computed from the generated data, a
//! sub-model, and recorded first-turn root replies. Every reply runs through the real REPL
//! (its code blocks in order, stopping at the first failure) and gets one verdict:
//!
//! - `parse error` / `run error`: loud; the model sees the error (and a hint) next turn;
//! - `correct`: the answer (FINAL, else the last printed line) is the expected one;
//! - `warned`: wrong, but the output carries a warning or note about it: loud;
//! - `SILENT`: ran cleanly, nothing flagged, wrong answer: the defect this test hunts.
//!
//! The test prints the parse rate, run rate and silent defects, and asserts that every reply
//! gets the verdict recorded for it (so every recorded silent trap is loud or impossible).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rlm_core::BatchExecutor;
use rlm_core::mock::MockBackend;
use rlm_repl::{Context, Repl};
use serde_json::json;

/// A small deterministic generator (a 64-bit LCG), so the data is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// The verdict of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    ParseError,
    RunError,
    Correct,
    Warned,
    Silent,
}

impl Verdict {
    fn is_loud(self) -> bool {
        matches!(self, Self::ParseError | Self::RunError | Self::Warned)
    }
}

/// A recorded first-turn root reply.
struct Reply {
    label: &'static str,
    /// The silent trap it walks into, if any (rhai-pitfalls.md).
    trap: Option<&'static str>,
    /// What it must get now.
    expect: Verdict,
    text: &'static str,
}

struct Task {
    name: &'static str,
    query: &'static str,
    context: Context,
    expected: String,
    /// Compare as numbers (within 0.006) rather than as text.
    numeric: bool,
    sub: fn(&str) -> String,
    replies: Vec<Reply>,
}

fn reply(
    label: &'static str,
    trap: Option<&'static str>,
    expect: Verdict,
    text: &'static str,
) -> Reply {
    Reply {
        label,
        trap,
        expect,
        text,
    }
}

fn no_sub(_: &str) -> String {
    "NONE".to_owned()
}

const CUSTOMERS: &[&str] = &[
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka",
];

fn sales() -> Task {
    let mut rng = Lcg(1);
    let mut rows = Vec::new();
    for i in 0..60 {
        let cents = if i == 37 {
            123_456
        } else {
            rng.below(90_000) + 100
        };
        rows.push(json!({"customer": rng.pick(CUSTOMERS), "amount": cents as f64 / 100.0}));
    }
    let top = rows
        .iter()
        .max_by(|a, b| {
            a["amount"]
                .as_f64()
                .partial_cmp(&b["amount"].as_f64())
                .unwrap()
        })
        .map(|r| r["customer"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    Task {
        name: "sales: customer of the largest order",
        query: "Which customer placed the single largest order?",
        context: Context::from(json!(rows)),
        expected: top,
        numeric: false,
        sub: no_sub,
        replies: vec![
            reply(
                "comparer on float fields",
                Some("float comparer leaves the array unsorted"),
                Verdict::Correct,
                "I'll sort the orders by amount, largest first.\n\n```repl\nlet rows = context;\nrows.sort(|a, b| b.amount - a.amount);\nprint(rows[0]);\nFINAL(rows[0].customer);\n```",
            ),
            reply(
                "sort_by with a key closure",
                Some("sort_by(xs, |x| key) does nothing"),
                Verdict::Correct,
                "```repl\nlet rows = context;\nsort_by(rows, |r| r.amount);\nlet top = rows[-1];\nprint(top);\nFINAL(top.customer);\n```",
            ),
            reply(
                "sorted with a key, Python style",
                None,
                Verdict::Correct,
                "```rhai\nlet ranked = sorted(context, |r| r.amount);\nFINAL(ranked[-1].customer);\n```",
            ),
        ],
    }
}

fn inventory() -> Task {
    let mut rng = Lcg(2);
    let mut text = String::new();
    let mut total = 0;
    for i in 0..80 {
        let qty = rng.below(500) + 1;
        total += qty;
        text.push_str(&format!("sku-{i:03},{qty}\n"));
    }
    Task {
        name: "inventory: total quantity",
        query: "What is the total quantity over all SKUs?",
        context: Context::from(text),
        expected: total.to_string(),
        numeric: true,
        sub: no_sub,
        replies: vec![
            reply(
                "for_each accumulation",
                Some("for_each passes the index"),
                Verdict::Warned,
                "Each line is `sku,qty`; sum the quantities.\n```repl\nlet total = 0;\nlet qtys = lines(context).map(|l| int(l.split(\",\")[1]));\nqtys.for_each(|q| total += q);\nprint(total);\n```",
            ),
            reply(
                "for loop",
                None,
                Verdict::Correct,
                "```repl\nlet total = 0;\nfor line in lines(context) {\n    let parts = line.split(\",\");\n    total += int(parts[1]);\n}\nFINAL(total);\n```",
            ),
            reply(
                "list comprehension",
                None,
                Verdict::ParseError,
                "```repl\nlet total = sum([int(l.split(\",\")[1]) for l in lines(context)]);\nFINAL(total);\n```",
            ),
        ],
    }
}

const METHODS: &[&str] = &["GET", "POST", "DELETE"];
const RESOURCES: &[&str] = &["users", "orders", "items", "carts", "search"];

fn access_log() -> Task {
    let mut rng = Lcg(3);
    let mut text = String::new();
    let mut pairs = BTreeSet::new();
    for i in 0..200 {
        let method = rng.pick(METHODS);
        let resource = rng.pick(RESOURCES);
        pairs.insert(format!("{method} /{resource}"));
        text.push_str(&format!(
            "10.0.{}.{} - - \"{method} /{resource}/{} HTTP/1.1\" 200\n",
            i % 7,
            rng.below(255),
            rng.below(1000)
        ));
    }
    Task {
        name: "access log: distinct METHOD /resource pairs",
        query: "How many distinct \"METHOD /resource\" pairs (first path segment) are in the log?",
        context: Context::from(text),
        expected: pairs.len().to_string(),
        numeric: true,
        sub: no_sub,
        replies: vec![
            reply(
                "regex_find_all with an alternation group",
                Some("regex_find_all returns the groups"),
                Verdict::Correct,
                "```repl\nlet hits = regex_find_all(context, \"(GET|POST|DELETE) /\\\\w+\");\nlet seen = #{};\nfor h in hits { seen[h] = true; }\nprint(seen.keys());\nFINAL(seen.len());\n```",
            ),
            reply(
                "regex_captures",
                None,
                Verdict::Correct,
                "```repl\nlet seen = #{};\nfor c in regex_captures(context, \"(GET|POST|DELETE) /(\\\\w+)\") {\n    seen[c[0] + \" /\" + c[1]] = true;\n}\nFINAL(seen.len());\n```",
            ),
        ],
    }
}

const WORDS: &[&str] = &[
    "river", "stone", "light", "the", "of", "and", "harbor", "lamp", "keeper", "night",
];

fn word_frequency() -> Task {
    let mut rng = Lcg(4);
    let mut words = Vec::new();
    for _ in 0..3000 {
        // Skewed: lower indices more often.
        let i = rng.below(WORDS.len()).min(rng.below(WORDS.len()));
        words.push(WORDS[i]);
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &words {
        *counts.entry(w).or_default() += 1;
    }
    let best = counts
        .iter()
        .max_by_key(|(w, n)| (**n, std::cmp::Reverse(**w)))
        .map(|(w, _)| (*w).to_owned())
        .unwrap_or_default();
    Task {
        name: "words: the most frequent word",
        query: "Which word occurs most often?",
        context: Context::from(words.join(" ")),
        expected: best,
        numeric: false,
        sub: no_sub,
        replies: vec![
            reply(
                "Counter habit: m[k] += 1",
                None,
                Verdict::RunError,
                "```repl\nlet counts = #{};\nfor w in split(context) {\n    counts[w] += 1;\n}\nprint(counts);\n```",
            ),
            reply(
                "get-or-zero idiom",
                None,
                Verdict::Correct,
                "```repl\nlet counts = #{};\nfor w in split(context) {\n    counts[w] = (counts.get(w) ?? 0) + 1;\n}\nlet best = \"\";\nlet most = 0;\nfor k in counts.keys() {\n    if counts[k] > most { most = counts[k]; best = k; }\n}\nprint(`${best}: ${most}`);\nFINAL(best);\n```",
            ),
        ],
    }
}

fn prices() -> Task {
    let mut rng = Lcg(5);
    let mut rows = Vec::new();
    let mut total = 0.0;
    for i in 0..45 {
        let price = (rng.below(9_000) + 99) as f64 / 100.0;
        total += price;
        rows.push(json!({"name": format!("product {i}"), "price": price}));
    }
    let average = total / rows.len() as f64;
    Task {
        name: "prices: average to two decimals",
        query: "What is the average price, to two decimals?",
        context: Context::from(json!(rows)),
        expected: format!("{average:.2}"),
        numeric: true,
        sub: no_sub,
        replies: vec![
            reply(
                "round(x, 2)",
                None,
                Verdict::Correct,
                "```repl\nlet prices = context.map(|p| p.price);\nlet avg = sum(prices) / prices.len();\nFINAL(round(avg, 2));\n```",
            ),
            reply(
                "fmt(x, 2)",
                None,
                Verdict::Correct,
                "```repl\nlet prices = context.map(|p| p.price);\nlet avg = sum(prices) / prices.len();\nprint(fmt(avg, 2));\nFINAL(fmt(avg, 2));\n```",
            ),
            reply(
                "hand-rounded",
                None,
                Verdict::Correct,
                "```repl\nlet total = 0.0;\nfor p in context { total += p.price; }\nlet avg = total / context.len();\nlet cents = (avg * 100.0).round();\nFINAL(cents / 100.0);\n```",
            ),
        ],
    }
}

fn review_sub(prompt: &str) -> String {
    if prompt.contains("terrible") || prompt.contains("broke") {
        "negative".to_owned()
    } else {
        "positive".to_owned()
    }
}

fn reviews() -> Task {
    let mut rng = Lcg(6);
    let good = [
        "Works great, would buy again.",
        "Lovely colour and fast delivery.",
        "Does what it says.",
    ];
    let bad = [
        "terrible fit, returning it.",
        "It broke after two days.",
        "Simply terrible.",
    ];
    let mut docs = Vec::new();
    let mut negative = 0;
    for i in 0..24 {
        let review = if rng.below(3) == 0 {
            negative += 1;
            bad[i % bad.len()]
        } else {
            good[i % good.len()]
        };
        docs.push(format!("Review {i}: {review}"));
    }
    Task {
        name: "reviews: how many are negative",
        query: "How many of the reviews are negative?",
        context: Context::from(docs),
        expected: negative.to_string(),
        numeric: true,
        sub: review_sub,
        replies: vec![
            reply(
                "llm_query on an array of prompts",
                Some("llm_query(array) sends one JSON prompt"),
                Verdict::RunError,
                "One sub-call per review.\n```repl\nlet verdicts = llm_query(context.map(|r| \"Is this review positive or negative? Answer with one word.\\n\\n\" + r));\nlet n = 0;\nfor v in verdicts {\n    if v == \"negative\" { n += 1; }\n}\nprint(n);\nFINAL(n);\n```",
            ),
            reply(
                "llm_batch",
                None,
                Verdict::Correct,
                "```repl\nlet prompts = context.map(|r| \"Is this review positive or negative? Answer with one word.\\n\\n\" + r);\nlet verdicts = llm_batch(prompts);\nlet n = verdicts.filter(|v| lower(v).contains(\"negative\")).len();\nFINAL(n);\n```",
            ),
        ],
    }
}

fn scores() -> Task {
    let mut rng = Lcg(7);
    let players: Vec<_> = (0..30)
        .map(|i| json!({"name": format!("p{i}"), "score": rng.below(100)}))
        .collect();
    let values: Vec<f64> = players
        .iter()
        .map(|p| p["score"].as_f64().unwrap_or_default())
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let above = values.iter().filter(|v| **v > mean).count();
    Task {
        name: "scores: players above the mean",
        query: "How many players scored above the mean score?",
        context: Context::from(json!({"season": 2024, "players": players})),
        expected: above.to_string(),
        numeric: true,
        sub: no_sub,
        replies: vec![
            reply(
                "closure reads the array it filters",
                None,
                Verdict::RunError,
                "```repl\nlet scores = context.players.map(|p| p.score);\nlet above = scores.filter(|s| s * scores.len() > sum(scores));\nFINAL(above.len());\n```",
            ),
            reply(
                "mean computed first",
                None,
                Verdict::Correct,
                "```repl\nlet scores = context.players.map(|p| p.score);\nlet mean = float(sum(scores)) / scores.len();\nlet above = scores.filter(|s| s > mean);\nprint(`mean ${mean}, above ${above.len()}`);\nFINAL(above.len());\n```",
            ),
        ],
    }
}

fn word_lengths() -> Task {
    let text = "the keeper lit the lamp at night and the light crossed the harbor while \
                stone steps by the river shone under every storm cloud above water";
    let distinct: BTreeSet<&str> = text.split_whitespace().collect();
    let five = distinct.iter().filter(|w| w.chars().count() == 5).count();
    Task {
        name: "words: distinct five-letter words",
        query: "How many distinct words have exactly five letters?",
        context: Context::from(text),
        expected: five.to_string(),
        numeric: true,
        sub: no_sub,
        replies: vec![
            reply(
                "map with integer keys",
                None,
                Verdict::RunError,
                "```repl\nlet by_len = #{};\nfor w in split(context) {\n    by_len[w.len()] = w;\n}\nprint(by_len);\n```",
            ),
            reply(
                "a set as a map of words",
                None,
                Verdict::Correct,
                "```repl\nlet seen = #{};\nfor w in split(context) { seen[w] = true; }\nlet five = seen.keys().filter(|w| w.len() == 5);\nprint(five);\nFINAL(five.len());\n```",
            ),
        ],
    }
}

fn needle_sub(prompt: &str) -> String {
    match prompt.find("the access code is ") {
        Some(at) => prompt[at + 19..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect(),
        None => "NONE".to_owned(),
    }
}

fn needle() -> Task {
    let mut rng = Lcg(8);
    let mut text = String::new();
    for i in 0..4000 {
        if i == 2_917 {
            text.push_str("Note: the access code is 48213.\n");
        }
        text.push_str(&format!(
            "line {i}: {} {} {}\n",
            rng.pick(WORDS),
            rng.pick(WORDS),
            rng.pick(WORDS)
        ));
    }
    Task {
        name: "needle: the access code",
        query: "What is the access code mentioned in the text?",
        context: Context::from(text),
        expected: "48213".to_owned(),
        numeric: false,
        sub: needle_sub,
        replies: vec![
            reply(
                "chunk_lines + llm_batch",
                None,
                Verdict::Correct,
                "```repl\nlet chunks = chunk_lines(context, 500);\nlet answers = llm_batch(chunks.map(|c| \"Give the access code in this text, digits only, or NONE.\\n\\n\" + c));\nlet found = answers.filter(|a| a != \"NONE\" && !a.starts_with(\"Error\"));\nprint(found);\nFINAL(found[0]);\n```",
            ),
            reply(
                "f-string",
                None,
                Verdict::ParseError,
                "```repl\nlet chunks = chunk(context, 20000);\nprint(f\"{len(chunks)} chunks\");\n```",
            ),
            reply(
                "counted in code",
                None,
                Verdict::Correct,
                "~~~repl\nlet hits = regex_captures(context, \"access code is (\\\\d+)\");\nprint(hits);\nFINAL(hits[0][0]);\n~~~",
            ),
        ],
    }
}

const CITIES: &[&str] = &["Oslo", "Lima", "Cairo", "Perth", "Quito"];

fn temperatures() -> Task {
    let mut rng = Lcg(9);
    let mut text = String::new();
    let mut sums: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (k, city) in CITIES.iter().enumerate() {
        for _ in 0..12 {
            let t = (rng.below(300) as f64 + 50.0 * k as f64) / 10.0 - 5.0;
            let entry = sums.entry(city).or_default();
            entry.0 += t;
            entry.1 += 1.0;
            text.push_str(&format!("{city},{t:.1}\n"));
        }
    }
    let best = sums
        .iter()
        .max_by(|a, b| (a.1.0 / a.1.1).partial_cmp(&(b.1.0 / b.1.1)).unwrap())
        .map(|(c, _)| (*c).to_owned())
        .unwrap_or_default();
    Task {
        name: "temperatures: warmest city on average",
        query: "Which city has the highest average temperature?",
        context: Context::from(text),
        expected: best,
        numeric: false,
        sub: no_sub,
        replies: vec![
            reply(
                "comparer on float averages",
                Some("float comparer leaves the array unsorted"),
                Verdict::Correct,
                "```repl\nlet sums = #{};\nlet counts = #{};\nfor line in lines(context) {\n    let p = line.split(\",\");\n    sums[p[0]] = (sums.get(p[0]) ?? 0.0) + float(p[1]);\n    counts[p[0]] = (counts.get(p[0]) ?? 0) + 1;\n}\nlet avg = #{};\nfor c in sums.keys() { avg[c] = sums[c] / counts[c]; }\nlet cities = avg.keys();\ncities.sort(|a, b| avg[b] - avg[a]);\nprint(cities);\nFINAL(cities[0]);\n```",
            ),
            reply(
                "sorted_by descending",
                None,
                Verdict::Correct,
                "```repl\nlet sums = #{};\nlet counts = #{};\nfor line in lines(context) {\n    let p = line.split(\",\");\n    sums[p[0]] = (sums.get(p[0]) ?? 0.0) + float(p[1]);\n    counts[p[0]] = (counts.get(p[0]) ?? 0) + 1;\n}\nlet ranked = sorted_by(sums.keys(), |c| sums[c] / counts[c], true);\nFINAL(ranked[0]);\n```",
            ),
            reply(
                "max with key=",
                None,
                Verdict::ParseError,
                "```repl\nlet cities = lines(context).map(|l| l.split(\",\")[0]);\nlet best = max(cities, key=|c| c.len());\n```",
            ),
        ],
    }
}

const SERVICES: &[&str] = &["auth", "billing", "search", "mail"];

fn service_errors() -> Task {
    let mut rng = Lcg(10);
    let mut text = String::new();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..400 {
        let service = SERVICES[rng.below(SERVICES.len()).min(rng.below(SERVICES.len()))];
        let level = if rng.below(4) == 0 { "ERROR" } else { "INFO" };
        if level == "ERROR" {
            *errors.entry(service).or_default() += 1;
        }
        text.push_str(&format!(
            "2024-05-01T10:{:02}:{:02} service={service} level={level} request {i}\n",
            i / 60 % 60,
            i % 60
        ));
    }
    let best = errors
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| (*s).to_owned())
        .unwrap_or_default();
    Task {
        name: "service log: most errors",
        query: "Which service logged the most ERROR lines?",
        context: Context::from(text),
        expected: best,
        numeric: false,
        sub: no_sub,
        replies: vec![
            reply(
                "regex_find_all expecting the group (Python re.findall)",
                Some("regex_find_all with a group: whole matches or groups?"),
                Verdict::Warned,
                "```repl\nlet services = regex_find_all(context, \"service=(\\\\w+) level=ERROR\");\nlet counts = #{};\nfor s in services { counts[s] = (counts.get(s) ?? 0) + 1; }\nprint(counts);\nlet best = \"\";\nfor k in counts.keys() { if best == \"\" || counts[k] > counts[best] { best = k; } }\nFINAL(best);\n```",
            ),
            reply(
                "grep and split",
                None,
                Verdict::Correct,
                "```repl\nlet counts = #{};\nfor hit in grep(context, \"level=ERROR\") {\n    let service = hit.text.split(\"service=\")[1].split(\" \")[0];\n    counts[service] = (counts.get(service) ?? 0) + 1;\n}\nlet best = \"\";\nfor k in counts.keys() {\n    if best == \"\" || counts[k] > counts[best] { best = k; }\n}\nFINAL(best);\n```",
            ),
        ],
    }
}

fn tasks() -> Vec<Task> {
    vec![
        sales(),
        inventory(),
        access_log(),
        word_frequency(),
        prices(),
        reviews(),
        scores(),
        word_lengths(),
        needle(),
        temperatures(),
        service_errors(),
    ]
}

/// The code blocks of a reply: ``` or ~~~ fences whose info string is `repl`, `rhai` or empty.
fn code_blocks(reply: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in reply.lines() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                for fence in ["```", "~~~"] {
                    if let Some(info) = trimmed.strip_prefix(fence) {
                        let info = info.trim();
                        if info.is_empty() || info == "repl" || info == "rhai" {
                            open = Some((fence.to_owned(), Vec::new()));
                        }
                    }
                }
            }
            Some((fence, lines)) => {
                if trimmed.starts_with(fence.as_str()) {
                    blocks.push(lines.join("\n"));
                    open = None;
                } else {
                    lines.push(line);
                }
            }
        }
    }
    blocks
}

struct Outcome {
    verdict: Verdict,
    answer: String,
    shown: String,
}

fn run_reply(task: &Task, reply: &Reply) -> Outcome {
    let sub = MockBackend::from_fn({
        let f = task.sub;
        move |request| Ok(f(request.last_user_message().unwrap_or_default()))
    });
    let sub: Arc<dyn BatchExecutor> = Arc::new(sub);
    let mut repl = Repl::builder(task.context.clone())
        .sub_backend(sub, "sub")
        .build();
    let mut shown = String::new();
    let mut answer = None;
    let mut last_output = String::new();
    let mut failure = None;
    for code in code_blocks(reply.text) {
        let outcome = repl.execute(&code);
        shown.push_str(&outcome.output);
        last_output = outcome.output.clone();
        if let Some(error) = &outcome.error {
            answer = error.lines().next().map(str::to_owned);
            failure = Some(if error.starts_with("Syntax error") {
                Verdict::ParseError
            } else {
                Verdict::RunError
            });
            break;
        }
        if outcome.final_answer.is_some() {
            answer = outcome.final_answer;
            break;
        }
    }
    let answer = answer.unwrap_or_else(|| {
        last_output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim_start_matches("=> ").trim().to_owned())
            .unwrap_or_default()
    });
    let correct = if task.numeric {
        match (answer.trim().parse::<f64>(), task.expected.parse::<f64>()) {
            (Ok(a), Ok(b)) => (a - b).abs() < 0.006,
            _ => false,
        }
    } else {
        answer.trim() == task.expected
    };
    let flagged = shown.contains("warning (line") || shown.contains("note (line");
    let verdict = match failure {
        Some(verdict) => verdict,
        None if correct => Verdict::Correct,
        None if flagged => Verdict::Warned,
        None => Verdict::Silent,
    };
    Outcome {
        verdict,
        answer,
        shown,
    }
}

#[test]
fn recorded_replies_are_right_or_loud() {
    let tasks = tasks();
    assert!(tasks.len() >= 10);
    let mut total = 0;
    let mut parsed = 0;
    let mut ran = 0;
    let mut correct = 0;
    let mut silent = Vec::new();
    let mut mismatches = Vec::new();
    let mut traps_quiet = 0;
    for task in &tasks {
        println!(
            "\n## {}: {} (expected {})",
            task.name, task.query, task.expected
        );
        for reply in &task.replies {
            let outcome = run_reply(task, reply);
            total += 1;
            parsed += usize::from(outcome.verdict != Verdict::ParseError);
            ran += usize::from(!matches!(
                outcome.verdict,
                Verdict::ParseError | Verdict::RunError
            ));
            correct += usize::from(outcome.verdict == Verdict::Correct);
            let trap = reply
                .trap
                .map(|t| format!(" [trap: {t}]"))
                .unwrap_or_default();
            println!(
                "- {:<11} {}{trap}: answer {:?}",
                format!("{:?}", outcome.verdict),
                reply.label,
                outcome.answer
            );
            if outcome.verdict == Verdict::Silent {
                silent.push(format!("{}: {}", task.name, reply.label));
            }
            if outcome.verdict != reply.expect {
                mismatches.push(format!(
                    "{} / {}: expected {:?}, got {:?}\n{}",
                    task.name, reply.label, reply.expect, outcome.verdict, outcome.shown
                ));
            }
            if reply.trap.is_some() && !outcome.verdict.is_loud() {
                traps_quiet += usize::from(outcome.verdict == Verdict::Silent);
            }
        }
    }
    let traps = tasks
        .iter()
        .flat_map(|t| &t.replies)
        .filter(|r| r.trap.is_some())
        .count();
    println!(
        "\ndrivability: {total} replies over {} tasks; parsed {parsed}/{total} ({:.0}%), ran \
         {ran}/{total} ({:.0}%), correct {correct}/{total}, silent defects {} (of {traps} \
         replies with a recorded silent trap)",
        tasks.len(),
        100.0 * parsed as f64 / total as f64,
        100.0 * ran as f64 / total as f64,
        silent.len()
    );
    for s in &silent {
        println!("  silent: {s}");
    }
    assert_eq!(traps_quiet, 0, "recorded silent traps still silent");
    assert!(silent.is_empty(), "silent defects: {silent:#?}");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}
