//! The `m3u-proxy` binary itself: settings from the environment and flags, and a graceful
//! stop on SIGTERM and SIGINT with open viewer connections.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::http_client;
use crate::util::origin::Origin;

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn spawn(envs: &[(&str, String)], args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start m3u-proxy")
}

pub(crate) async fn wait_healthy(base: &str) {
    let http = http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(res) = http.get(format!("{base}/health")).send().await {
            if res.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("m3u-proxy did not come up at {base}");
}

/// Sends `signal` and waits for the process to exit; returns its status and how long it took.
async fn stop_with(child: &mut Child, signal: &str) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "m3u-proxy ignored {signal}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn settings_come_from_the_environment_and_sigterm_stops_it_with_viewers_connected() {
    let origin = Origin::start().await;
    origin.live_ts("/live.ts", 50_000);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn(
        &[
            ("M3U_PROXY_HOST", "127.0.0.1".into()),
            ("M3U_PROXY_PORT", port.to_string()),
            ("LOG_LEVEL", "warn".into()),
            ("API_TOKEN", "env-token".into()),
        ],
        &[],
    );
    wait_healthy(&base).await;
    let http = http_client();
    let refused = http.get(format!("{base}/streams")).send().await.unwrap();
    assert_eq!(
        refused.status(),
        401,
        "API_TOKEN from the environment applies"
    );
    let created: serde_json::Value = http
        .post(format!("{base}/streams"))
        .header("X-API-Token", "env-token")
        .json(&serde_json::json!({"url": origin.url("/live.ts")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = created["stream_endpoint"].as_str().unwrap();
    // A live viewer holds a connection open: shutdown must end it rather than wait forever.
    let mut viewer = http.get(format!("{base}{endpoint}")).send().await.unwrap();
    assert!(viewer.chunk().await.unwrap().is_some());

    let (status, took) = stop_with(&mut child, "-TERM").await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(took < Duration::from_secs(3), "stopped promptly: {took:?}");
    let rest = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(_)) = viewer.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the viewer's connection was closed");
}

#[tokio::test]
async fn flags_override_the_environment_and_sigint_stops_it() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn(
        &[
            ("M3U_PROXY_PORT", "1".into()),
            ("M3U_PROXY_HOST", "0.0.0.0".into()),
        ],
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--debug",
        ],
    );
    wait_healthy(&base).await;
    let (status, _) = stop_with(&mut child, "-INT").await;
    assert!(status.success(), "clean exit on SIGINT: {status}");
}

#[tokio::test]
async fn bad_settings_are_refused_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--cleanup-interval",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cleanup interval must be greater than zero"),
        "{stderr}"
    );

    for (args, says) in [
        (
            ["--fanout-buffer", "1000000"],
            "fan-out buffer must be at most 65536",
        ),
        (["--slow-viewer", "wait"], "invalid value 'wait'"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
