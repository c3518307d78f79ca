//! Writes a synthetic trace and its page, and says how long rendering took:
//! `cargo run -p rlm-view --release --example synth -- CALLS [CHILDREN] [DIR]`.

use std::time::Instant;

use rlm_view::synth::{SynthOptions, trace};
use rlm_view::{ViewOptions, render_file};

fn main() {
    let mut args = std::env::args().skip(1);
    let calls = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let children = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".to_owned()));
    let options = SynthOptions {
        sub_calls: calls,
        children,
        fail_every: 97,
        ..SynthOptions::default()
    };
    let text = trace(&options);
    let trace_path = dir.join(format!("synth-{calls}.jsonl"));
    let page_path = dir.join(format!("synth-{calls}.html"));
    if let Err(e) = std::fs::write(&trace_path, &text) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let started = Instant::now();
    match render_file(&trace_path, &page_path, &ViewOptions::default()) {
        Ok(page) => println!(
            "{}: {} events, {} sub-calls, trace {} bytes, page {} bytes, rendered in {:.0} ms",
            page_path.display(),
            page.events,
            page.sub_calls,
            text.len(),
            page.html.len(),
            started.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
