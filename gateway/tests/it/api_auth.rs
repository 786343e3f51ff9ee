//! The HTTP API's tokens and limits, from a second loopback address
//! (127.0.0.2, standing for another host): no state changes without an
//! admin token, read tokens read, forms are refused, webhooks only where
//! the config allows, campaigns only with a key, and idle connections
//! cannot starve `/healthz` or the broker.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use eddy_gateway::Gateway;
use eddy_gateway::auth::ADMIN_TOKEN_FILE;
use eddy_gateway::client::send;
use eddy_test_support::http::{admin_token, api_call, get, http_get, metric};
use hyper::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::common::{json_publisher, send_reading, test_config, wait_committed};

const OTHER_HOST: [u8; 4] = [127, 0, 0, 2];

/// One request with an optional bearer token and a content type.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", content_type)];
    if let Some(a) = &authorization {
        headers.push(("authorization", a.as_str()));
    }
    let answer = send(
        &addr.to_string(),
        method,
        path,
        &headers,
        body.as_bytes().to_vec(),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    (
        answer.status,
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
    )
}

/// A new token of scope `read` named `name`, made with the admin token.
async fn read_token(http: SocketAddr, admin: &str, name: &str) -> String {
    let body = json!({"name": name, "scope": "read"}).to_string();
    let (status, made) = api_call(http, Method::POST, "/api/tokens", admin, body).await;
    assert_eq!(status, 201, "{made}");
    let made: Value = serde_json::from_str(&made).expect("json");
    made["token"].as_str().expect("token").to_string()
}

/// Whether an `{"error": ...}` answer contains `text`.
fn error_says(answer: &Value, text: &str) -> bool {
    answer["error"].as_str().is_some_and(|e| e.contains(text))
}

fn names(listed: &Value) -> Vec<String> {
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_auth_refuses_changes_without_an_admin_token_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path().join("data"), None);
    config.http.listen = SocketAddr::from((OTHER_HOST, 0));
    let gateway = Gateway::start(config).await.expect("starts");
    let http = gateway.http_addr().expect("http");

    // The admin token was made at first start, for the owner only.
    let file = gateway.data_dir().join(ADMIN_TOKEN_FILE);
    let mode = std::fs::metadata(&file)
        .expect("admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // So are the data directory and the store file (whatever the umask).
    let mode_of =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode_of(gateway.data_dir()), 0o700);
    assert_eq!(
        mode_of(&gateway.data_dir().join(eddy_gateway::STORE_FILE)),
        0o600
    );
    let admin = admin_token(gateway.data_dir());
    let read = read_token(http, &admin, "viewer").await;

    let (_, before) = call(http, Method::GET, "/api/rules", Some(&admin), "", "").await;
    let rule = json!({"metric": "t", "window": "10s", "aggregate": "mean", "above": 1}).to_string();
    let json_type = "application/json";
    for (token, expected) in [
        (None, 401),
        (Some("eddy_0000"), 401),
        (Some(read.as_str()), 403),
    ] {
        for (method, path, body) in [
            (Method::PUT, "/api/rules/sneaky", rule.as_str()),
            (Method::DELETE, "/api/rules/sneaky", ""),
            (Method::POST, "/api/ota/campaigns?devices=all", "image"),
            (Method::POST, "/api/ota/campaigns/1/halt", ""),
            (
                Method::POST,
                "/api/tokens",
                "{\"name\": \"mine\", \"scope\": \"admin\"}",
            ),
            (Method::DELETE, "/api/tokens/admin", ""),
        ] {
            let (status, answer) = call(http, method.clone(), path, token, json_type, body).await;
            assert_eq!(status, expected, "{method} {path} with {token:?}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
    }
    // Reading needs a token too; a read token reads, but not the tokens.
    for path in [
        "/api/rules",
        "/api/alerts",
        "/api/live",
        "/api/ota/campaigns",
    ] {
        let (status, _) = call(http, Method::GET, path, None, "", "").await;
        assert_eq!(status, 401, "{path}");
        let (status, answer) = call(http, Method::GET, path, Some(&read), "", "").await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let (status, _) = call(http, Method::GET, "/api/tokens", Some(&read), "", "").await;
    assert_eq!(status, 403);

    // A form (what a cross-site page can post) is refused even with the
    // admin token; without one it never gets that far.
    let form = "application/x-www-form-urlencoded";
    for (token, expected) in [(Some(admin.as_str()), 415), (None, 401)] {
        let (status, answer) = call(
            http,
            Method::POST,
            "/api/ota/campaigns?devices=all",
            token,
            form,
            "devices=all",
        )
        .await;
        assert_eq!(status, expected, "{answer}");
        let (status, _) = call(
            http,
            Method::PUT,
            "/api/rules/sneaky",
            token,
            "text/plain",
            &rule,
        )
        .await;
        assert_eq!(status, expected);
    }

    // Nothing changed.
    let (_, after) = call(http, Method::GET, "/api/rules", Some(&admin), "", "").await;
    assert_eq!(names(&after), names(&before));
    let (_, campaigns) = call(
        http,
        Method::GET,
        "/api/ota/campaigns",
        Some(&admin),
        "",
        "",
    )
    .await;
    assert_eq!(campaigns, json!([]));
    let (_, tokens) = call(http, Method::GET, "/api/tokens", Some(&admin), "", "").await;
    assert_eq!(names(&tokens), vec!["admin", "viewer"], "{tokens}");
    assert!(
        !tokens.to_string().contains(&read),
        "no token is ever shown again"
    );

    // Open: health and, by default, metrics.
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/metrics").await.0, 200);

    // The admin token changes things; a webhook nobody allowed is refused.
    let (status, answer) = call(
        http,
        Method::PUT,
        "/api/rules/ok",
        Some(&admin),
        json_type,
        &rule,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let hook = json!({"metric": "t", "window": "10s", "aggregate": "mean", "above": 1,
        "actions": [{"type": "webhook", "url": "http://127.0.0.1:9/steal"}]});
    let (status, answer) = call(
        http,
        Method::PUT,
        "/api/rules/hook",
        Some(&admin),
        json_type,
        &hook.to_string(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(error_says(&answer, "webhook_allow"), "{answer}");
    // Without [ota] public_key no campaign is accepted at all.
    let (status, answer) = call(
        http,
        Method::POST,
        "/api/ota/campaigns?devices=all",
        Some(&admin),
        "application/octet-stream",
        "image",
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(error_says(&answer, "[ota] public_key"), "{answer}");
    // A revoked token is refused from then on.
    let (status, _) = call(
        http,
        Method::DELETE,
        "/api/tokens/viewer",
        Some(&admin),
        "",
        "",
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(http, Method::GET, "/api/rules", Some(&read), "", "").await;
    assert_eq!(status, 401);
    gateway.shutdown().await.expect("clean shutdown");

    // A restart keeps the admin token (the file is not rewritten).
    let mut config = test_config(dir.path().join("data"), None);
    config.http.listen = SocketAddr::from((OTHER_HOST, 0));
    let gateway = Gateway::start(config).await.expect("restarts");
    assert_eq!(admin_token(gateway.data_dir()), admin);
    let http = gateway.http_addr().expect("http");
    let (status, listed) = call(http, Method::GET, "/api/rules", Some(&admin), "", "").await;
    assert_eq!(status, 200);
    assert!(names(&listed).contains(&"ok".to_string()));
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_auth_puts_metrics_behind_a_read_token_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path().join("data"), None);
    config.http.listen = SocketAddr::from((OTHER_HOST, 0));
    config.http.metrics_auth = true;
    let gateway = Gateway::start(config).await.expect("starts");
    let http = gateway.http_addr().expect("http");
    assert_eq!(http_get(http, "/metrics").await.0, 401);
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    let admin = admin_token(gateway.data_dir());
    let read = read_token(http, &admin, "prometheus").await;
    let (status, body) = call(http, Method::GET, "/metrics", Some(&read), "", "").await;
    assert_eq!(status, 200, "{body}");
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_limits_idle_connections_time_out_and_leave_room_for_healthz_and_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path().join("data"), None);
    config.http.listen = SocketAddr::from((OTHER_HOST, 0));
    config.broker.listen = SocketAddr::from((OTHER_HOST, 0));
    config.http.header_timeout = Duration::from_secs(1);
    config.http.max_connections = 256;
    let gateway = Gateway::start(config).await.expect("starts");
    let http = gateway.http_addr().expect("http");

    // 1,000 connections that never finish their request's head.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let Ok(mut stream) = tokio::net::TcpStream::connect(http).await else {
            continue;
        };
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await;
        idle.push(stream);
    }
    assert!(idle.len() >= 900, "{} connections opened", idle.len());

    // A device still gets in and its reading is stored meanwhile.
    let device = json_publisher(gateway.broker(), "after-the-flood");
    send_reading(&device, "d1", "t", 1_700_000_000_000, 1.0).await;
    wait_committed(&gateway, 1).await;

    // Once the header timeout closed the idle ones, /healthz answers a
    // fresh connection.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get(http, "/healthz").await {
            break;
        }
        assert!(Instant::now() < end, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http_get(http, "/metrics").await;
    let refused = metric(&metrics, "eddy_http_connections_refused_total").unwrap_or(0);
    let timed_out = metric(&metrics, "eddy_http_connections_timed_out_total").unwrap_or(0);
    assert!(refused > 0, "no connection refused at the cap");
    assert!(timed_out > 0, "no connection timed out");
    drop(idle);
    gateway.shutdown().await.expect("clean shutdown");
}
