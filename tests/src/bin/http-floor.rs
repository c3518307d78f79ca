//! The HTTP client's own floor: the traffic of a benchmark, sent by a bare `reqwest` client
//! (the client `rlm` uses, with its connection settings) and nothing else: no REPL, no
//! prompts, no cache, no accounting. Benchmarks run it against the same mock server, in the
//! same run as `rlm`, so that a ratio against the ideal can be read beside what the HTTP
//! client alone reaches on the machine.
//!
//! ```text
//! http-floor URL jobs N SLOTS SUBS   # N jobs, SLOTS at once: each one root request, then
//!                                    # SUBS requests at once (the `rlm batch` benchmark)
//! http-floor URL calls N CONCURRENCY # N requests, CONCURRENCY at once (per-call CPU)
//! ```
//!
//! URL is the server's base URL (`.../v1`). Root requests name the model `root`, the others
//! `sub`. It prints the wall time in seconds on stdout; the caller reads its CPU time. Its
//! requests are smaller than `rlm`'s (no system prompt), so the figure is a lower bound.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream;
use tokio::sync::Semaphore;

const USAGE: &str = "usage: http-floor URL jobs N SLOTS SUBS | http-floor URL calls N CONCURRENCY";

fn body(model: &str, content: &str) -> Bytes {
    let value = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    });
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// One POST; its reply's body read whole.
async fn post(client: &reqwest::Client, url: &str, body: Bytes) -> Result<(), reqwest::Error> {
    client
        .post(url)
        .bearer_auth("sk-floor-not-a-key")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await
        .map(drop)
}

/// Argument `i`: a count from 1 to a million.
fn number(args: &[String], i: usize) -> Result<usize, String> {
    const MOST: usize = 1_000_000;
    args.get(i)
        .and_then(|a| a.parse().ok())
        .filter(|n| (1..=MOST).contains(n))
        .ok_or_else(|| format!("{USAGE}\n(counts are whole numbers from 1 to {MOST})"))
}

/// An error with its causes, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn jobs(
    client: reqwest::Client,
    url: Arc<str>,
    n: usize,
    slots: usize,
    subs: usize,
) -> Result<(), String> {
    let slots = Arc::new(Semaphore::new(slots));
    let mut running = tokio::task::JoinSet::new();
    for job in 0..n {
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (client, url) = (client.clone(), Arc::clone(&url));
        running.spawn(async move {
            post(&client, &url, body("root", &format!("job {job}"))).await?;
            let wave = (0..subs).map(|i| {
                post(
                    &client,
                    &url,
                    body("sub", &format!("part {i} of document {job}")),
                )
            });
            let done: Result<Vec<()>, _> = join_all(wave).await.into_iter().collect();
            drop(permit);
            done.map(drop)
        });
        while let Some(joined) = running.try_join_next() {
            joined
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
    }
    while let Some(joined) = running.join_next().await {
        joined
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn calls(
    client: reqwest::Client,
    url: Arc<str>,
    n: usize,
    concurrency: usize,
) -> Result<(), String> {
    let mut replies = stream::iter(0..n)
        .map(|i| post(&client, &url, body("sub", &format!("prompt {i}"))))
        .buffer_unordered(concurrency);
    while let Some(reply) = replies.next().await {
        reply.map_err(|e| chain(&e))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = async {
        let base = args.first().ok_or_else(|| USAGE.to_owned())?;
        let url: Arc<str> = format!("{}/chat/completions", base.trim_end_matches('/')).into();
        reqwest::Url::parse(&url).map_err(|e| format!("{base} is not a URL: {e}"))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        // As rlm-openai builds its client for a plain-http base URL.
        let client = reqwest::Client::builder()
            .tls_certs_only([])
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| chain(&e))?;
        let started = Instant::now();
        match args.get(1).map(String::as_str) {
            Some("jobs") if args.len() == 5 => {
                let (n, slots, subs) = (number(&args, 2)?, number(&args, 3)?, number(&args, 4)?);
                jobs(client, url, n, slots, subs).await?;
            }
            Some("calls") if args.len() == 4 => {
                let (n, concurrency) = (number(&args, 2)?, number(&args, 3)?);
                calls(client, url, n, concurrency).await?;
            }
            _ => return Err(USAGE.to_owned()),
        }
        Ok::<_, String>(started.elapsed().as_secs_f64())
    };
    match run.await {
        Ok(wall) => {
            println!("{wall:.4}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("http-floor: {e}");
            ExitCode::from(2)
        }
    }
}
