//! A fake broker over a real socket that answers the handshake and then goes silent: the
//! client times out with a typed error, drops that connection, and dials again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod fake_broker;

use fake_broker::{answer, read_request};
use sluice_client::{Client, ClientConfig, ClientError};
use sluice_proto::protocol::{ApiVersionsResponse, api_version_ranges};
use tokio::net::TcpListener;

/// Answers ApiVersions when `handshake` is set, then reads and ignores everything.
async fn serve(listener: TcpListener, handshake: bool, accepted: Arc<AtomicUsize>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            while let Some(header) = read_request(&mut stream).await {
                if handshake && header.api_key == 0 {
                    let body = ApiVersionsResponse {
                        apis: api_version_ranges(),
                        node_id: 0,
                        shard: 0,
                        shard_count: 1,
                    };
                    answer(&mut stream, header.correlation_id, &body).await;
                }
            }
        });
    }
}

async fn fake_broker(handshake: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve(listener, handshake, accepted.clone()));
    (addr, accepted)
}

#[tokio::test]
async fn silent_handshake_times_out() {
    let (addr, _) = fake_broker(false).await;
    let mut config = ClientConfig::new(&addr);
    config.connect_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = Client::connect(config).await.expect_err("no handshake");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out after 300 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn silent_request_times_out_and_the_connection_is_replaced() {
    let (addr, accepted) = fake_broker(true).await;
    let mut config = ClientConfig::new(&addr);
    config.request_timeout = Duration::from_millis(300);
    // One attempt per admin call (admin calls retry within admin_timeout).
    config.admin_timeout = Duration::from_millis(300);
    let client = Client::connect(config).await.expect("handshake answered");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let err = client.list_topics().await.expect_err("no answer");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("ListTopics request to"),
        "{err}"
    );

    // The timed-out connection is not reused: the next request dials again.
    let err = client.list_topics().await.expect_err("no answer");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
