//! The Redis tier against a real `redis-server` on a loopback port.

use std::time::Duration;

use rlm_cache::{CachedBackend, RedisStore, Store, StoreKey, StoredBackend};
use rlm_core::mock::MockBackend;
use rlm_core::{BatchExecutor, BatchOptions, Completion, CompletionRequest, LlmBackend};
use rlm_tests::RedisServer;

fn prompts(names: &[&str]) -> Vec<CompletionRequest> {
    names
        .iter()
        .map(|p| CompletionRequest::prompt("sub", *p))
        .collect()
}

async fn workers_share_answers_and_prefixes_keep_deployments_apart() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let first = MockBackend::echo();
    let worker = CachedBackend::new(StoredBackend::new(
        first.clone(),
        RedisStore::new(&redis.url(), "team-a", None).expect("a store"),
    ));
    let results = worker
        .complete_batch(prompts(&["a", "b"]), &BatchOptions::new(2))
        .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(first.calls(), 2);

    // Another worker (another machine, in effect): answered from Redis.
    let second = MockBackend::echo();
    let other = CachedBackend::new(StoredBackend::new(
        second.clone(),
        RedisStore::new(&redis.url(), "team-a", None).expect("a store"),
    ));
    let results = other
        .complete_batch(prompts(&["b", "a", "c"]), &BatchOptions::new(2))
        .await;
    let texts: Vec<String> = results
        .into_iter()
        .map(|r| r.map(|c| c.text).unwrap_or_default())
        .collect();
    assert_eq!(texts, ["echo: b", "echo: a", "echo: c"]);
    assert_eq!(second.calls(), 1);
    assert_eq!(other.inner().hits(), 2);

    // Another prefix shares nothing.
    let third = MockBackend::echo();
    let apart = StoredBackend::new(
        third.clone(),
        RedisStore::new(&redis.url(), "team-b", None).expect("a store"),
    );
    assert!(
        apart
            .complete(CompletionRequest::prompt("sub", "a"))
            .await
            .is_ok()
    );
    assert_eq!(third.calls(), 1);
}

async fn entries_expire_after_their_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store =
        RedisStore::new(&redis.url(), "ttl", Some(Duration::from_millis(200))).expect("a store");
    let key = StoreKey::of(&CompletionRequest::prompt("sub", "x"));
    store
        .put_many(&[(key, Completion::new("sub", "y"))])
        .await
        .expect("written");
    assert!(store.get_many(&[key]).await.expect("read")[0].is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.get_many(&[key]).await.expect("read")[0].is_none());
}

async fn calls_go_on_while_redis_is_down_and_sharing_resumes_when_it_returns() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let provider = MockBackend::echo();
    let backend = StoredBackend::new(
        provider.clone(),
        RedisStore::new(&redis.url(), "outage", None).expect("a store"),
    );
    assert!(
        backend
            .complete(CompletionRequest::prompt("sub", "before"))
            .await
            .is_ok()
    );
    redis.stop();
    // Down: every call is answered by the provider, none fails.
    for i in 0..5 {
        let answer = backend
            .complete(CompletionRequest::prompt("sub", format!("down {i}")))
            .await;
        assert_eq!(answer.map(|c| c.text).ok(), Some(format!("echo: down {i}")));
    }
    let results = backend
        .complete_batch(prompts(&["p", "q"]), &BatchOptions::new(2))
        .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(provider.calls(), 8);
    // Back (empty): after the store's one-second back-off, writes and reads work again.
    redis.resume();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut stored = false;
    for _ in 0..50 {
        let _ = backend
            .complete(CompletionRequest::prompt("sub", "after"))
            .await;
        let store = backend.store();
        let key = StoreKey::of(&CompletionRequest::prompt("sub", "after"));
        if matches!(store.get_many(&[key]).await, Ok(found) if found[0].is_some()) {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the store is used again once Redis is back");
    let hits = backend.hits();
    assert!(
        backend
            .complete(CompletionRequest::prompt("sub", "after"))
            .await
            .is_ok()
    );
    assert_eq!(backend.hits(), hits + 1);
}

async fn a_changed_byte_or_a_failed_reply_is_never_an_answer() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::new(&redis.url(), "check", None).expect("a store");
    let request = CompletionRequest::prompt("sub", "What is six times seven?");
    let key = StoreKey::of(&request);
    let answer = Completion::new("sub", "The answer is 42.");
    store
        .put_many(&[(key, answer.clone())])
        .await
        .expect("written");
    // One byte of the stored answer changed in Redis: after the 4-byte format tag and the
    // 32-byte checksum comes the completion's JSON.
    let json = serde_json::to_vec(&answer).expect("json");
    let at = json
        .windows(2)
        .position(|w| w == b"42")
        .expect("the answer")
        + 1;
    let changed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "SETRANGE"])
        .arg(format!("check:cache:{}", key.to_hex()))
        .arg((36 + at).to_string())
        .arg("3")
        .output()
        .expect("redis-cli runs");
    assert!(changed.status.success());
    assert!(store.get_many(&[key]).await.expect("read")[0].is_none());

    // Removed, so the provider is asked again and its answer stored anew.
    let provider = MockBackend::from_fn(|_: &CompletionRequest| Ok("The answer is 42.".into()));
    let backend = StoredBackend::new(provider.clone(), store);
    for _ in 0..2 {
        let text = backend.complete(request.clone()).await.map(|c| c.text);
        assert_eq!(text.as_deref(), Ok("The answer is 42."));
    }
    assert_eq!((provider.calls(), backend.hits()), (1, 1));

    // A reply cut at the token limit is never stored: asking again sends again.
    let cut = MockBackend::echo().with_shape(|_, completion| {
        completion.with_finish_reason(Some(rlm_core::FinishReason::Length))
    });
    let backend = StoredBackend::new(
        cut.clone(),
        RedisStore::new(&redis.url(), "check", None).expect("a store"),
    );
    for _ in 0..2 {
        assert!(
            backend
                .complete(CompletionRequest::prompt("sub", "long"))
                .await
                .is_ok()
        );
    }
    assert_eq!((cut.calls(), backend.hits()), (2, 0));
}

fn a_bad_url_is_a_clear_error_without_the_password() {
    let error = RedisStore::new("http://:hunter2@example.com", "rlm", None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("redis"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

fn a_store_made_outside_a_runtime_works_inside_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Made with no tokio runtime around (it must not panic), used inside one.
    let store = RedisStore::new(&redis.url(), "outside", None).expect("a store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let key = StoreKey::of(&CompletionRequest::prompt("sub", "x"));
    runtime.block_on(async {
        store
            .put_many(&[(key, Completion::new("sub", "y"))])
            .await
            .expect("written");
        assert!(store.get_many(&[key]).await.expect("read")[0].is_some());
    });
}

fn main() -> std::process::ExitCode {
    rlm_tests::harness::Suite::new()
        .test(
            "a_bad_url_is_a_clear_error_without_the_password",
            a_bad_url_is_a_clear_error_without_the_password,
        )
        .needs("redis-server", rlm_tests::redis_server_binary().is_some())
        .tokio(
            "workers_share_answers_and_prefixes_keep_deployments_apart",
            workers_share_answers_and_prefixes_keep_deployments_apart,
        )
        .tokio(
            "entries_expire_after_their_ttl",
            entries_expire_after_their_ttl,
        )
        .tokio(
            "calls_go_on_while_redis_is_down_and_sharing_resumes_when_it_returns",
            calls_go_on_while_redis_is_down_and_sharing_resumes_when_it_returns,
        )
        .tokio(
            "a_changed_byte_or_a_failed_reply_is_never_an_answer",
            a_changed_byte_or_a_failed_reply_is_never_an_answer,
        )
        .test(
            "a_store_made_outside_a_runtime_works_inside_one",
            a_store_made_outside_a_runtime_works_inside_one,
        )
        .run()
}
