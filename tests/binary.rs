//! The `m3u-proxy` binary itself: settings from the environment and flags, and a graceful
//! stop on SIGTERM and SIGINT with open viewer connections.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::origin::Origin;
use crate::util::{create_stream_at, eventually, http_client};

/// A port that was free a moment ago (see [`start`] for the race).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh, empty data directory for one run of the binary (under the system temp dir, so
/// no test ever writes `./m3u-proxy-data` into the repository). A test that sets
/// `M3U_PROXY_DATA_DIR` itself overrides it.
pub(crate) fn scratch_data_dir() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("m3u-proxy-bin-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.display().to_string()
}

fn spawn(envs: &[(&str, String)], args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
        .env("M3U_PROXY_DATA_DIR", scratch_data_dir())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start m3u-proxy")
}

/// Starts m3u-proxy with the environment and arguments `setup` gives for a port, and waits
/// until it answers `/health`; returns it and its base URL. The binary needs a port number,
/// so the port is one that was free a moment ago: when another process took it first, the
/// proxy exits (address in use) and is started again on another port.
pub(crate) async fn start(
    setup: impl Fn(u16) -> (Vec<(&'static str, String)>, Vec<String>),
) -> (Child, String) {
    let http = http_client();
    for _ in 0..5 {
        let port = free_port();
        let (envs, args) = setup(port);
        let mut child = spawn(&envs, &args);
        let base = format!("http://127.0.0.1:{port}");
        let up = eventually(
            Duration::from_secs(10),
            "m3u-proxy answering /health",
            || {
                let exited = child.try_wait().unwrap().is_some();
                let health = http.get(format!("{base}/health")).send();
                async move {
                    if exited {
                        return Some(false);
                    }
                    let res = health.await.ok()?;
                    res.status().is_success().then_some(true)
                }
            },
        )
        .await;
        if up {
            return (child, base);
        }
    }
    panic!("m3u-proxy exited at start five times (no free port?)");
}

/// Sends `signal` and waits for the process to exit; returns its status and how long it took.
pub(crate) async fn stop_with(
    child: &mut Child,
    signal: &str,
) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = eventually(Duration::from_secs(10), "m3u-proxy to exit", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    (status, started.elapsed())
}

#[tokio::test]
async fn settings_come_from_the_environment_and_sigterm_stops_it_with_viewers_connected() {
    let origin = Origin::start().await;
    origin.live_ts("/live.ts", 50_000);
    let (mut child, base) = start(|port| {
        let envs = vec![
            ("M3U_PROXY_HOST", "127.0.0.1".into()),
            ("M3U_PROXY_PORT", port.to_string()),
            ("LOG_LEVEL", "warn".into()),
            ("API_TOKEN", "env-token".into()),
        ];
        (envs, vec![])
    })
    .await;
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
    let (mut child, _) = start(|port| {
        let envs = vec![
            ("M3U_PROXY_PORT", "1".into()),
            ("M3U_PROXY_HOST", "0.0.0.0".into()),
        ];
        let args = [
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--debug",
        ];
        (envs, args.map(String::from).to_vec())
    })
    .await;
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

/// Runs `m3u-proxy` on 127.0.0.1 with `envs` and its stdout and stderr captured.
fn spawn_logged(port: u16, envs: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
        .env_remove("LOG_LEVEL")
        .env_remove("LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("M3U_PROXY_HOST", "127.0.0.1")
        .env("M3U_PROXY_PORT", port.to_string())
        .env("M3U_PROXY_DATA_DIR", scratch_data_dir())
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start m3u-proxy")
}

/// Waits until the proxy at `base` answers `/health`.
async fn wait_healthy(base: &str) {
    let http = http_client();
    eventually(
        Duration::from_secs(10),
        "m3u-proxy answering /health",
        || {
            let health = http.get(format!("{base}/health")).send();
            async move { health.await.ok()?.status().is_success().then_some(()) }
        },
    )
    .await;
}

/// Stops a `spawn_logged` proxy with SIGTERM and returns what it wrote on stdout.
async fn stop_and_read(mut child: Child) -> String {
    let (status, _) = stop_with(&mut child, "-TERM").await;
    assert!(status.success(), "{status}");
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn bad_settings_fail_before_listening_with_one_line() {
    // The port is taken: a server that bound before checking would complain about that.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let file = std::env::temp_dir().join(format!("m3u-proxy-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, "a file").unwrap();
    let under_a_file = file.join("data").display().to_string();
    for (env, says) in [
        (
            ("FANOUT_BUFFER", "70000"),
            "fan-out buffer must be at most 65536",
        ),
        (
            ("UPSTREAM_READ_TIMEOUT", "0"),
            "read-stall timeout must be greater than zero",
        ),
        (
            ("UPSTREAM_READ_TIMEOUT", "-1"),
            "--read-timeout must be a number of seconds",
        ),
        (
            ("M3U_PROXY_DATA_DIR", under_a_file.as_str()),
            "cannot use data directory",
        ),
        (
            ("LOG_LEVEL", "warnin"),
            "off, error, warn, info, debug, trace",
        ),
        (("LOG_FORMAT", "xml"), "invalid value 'xml'"),
        (("SLOW_VIEWER", "wait"), "invalid value 'wait'"),
    ] {
        let out = spawn_logged(port, &[env]).wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(!stdout.contains("listening"), "{env:?}: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(says),
            "{env:?}: {stderr}"
        );
        assert!(!stderr.contains("Caused by"), "{stderr}");
        assert!(
            lines.len() == 1 || (lines.len() == 2 && lines[1].starts_with("hint: ")),
            "{env:?}: {stderr}"
        );
    }
    std::fs::remove_file(&file).unwrap();
    // A good configuration on a taken port: one line, exit 1.
    let out = spawn_logged(port, &[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: cannot listen on"), "{stderr}");
}

#[tokio::test]
async fn log_level_warning_means_warn_and_a_pipe_gets_no_colour() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = spawn_logged(port, &[("LOG_LEVEL", "warning")]);
    wait_healthy(&base).await;
    let http = http_client();
    let created = create_stream_at(&http, &base, "http://127.0.0.1:1/x.m3u8").await;
    let id = created["stream_id"].as_str().unwrap();
    let res = http
        .get(format!("{base}/hls/{id}/playlist.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let logs = stop_and_read(child).await;
    assert!(
        logs.contains("request failed"),
        "a warning is logged: {logs}"
    );
    assert!(!logs.contains("listening"), "info is below warn: {logs}");
    assert!(
        !logs.contains('\x1b'),
        "no colour codes in a pipe: {logs:?}"
    );
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let port = free_port();
    let child = spawn_logged(port, &[("LOG_FORMAT", "json")]);
    wait_healthy(&format!("http://127.0.0.1:{port}")).await;
    let logs = stop_and_read(child).await;
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let listening = lines
        .iter()
        .find(|l| l["fields"]["message"] == "m3u-proxy listening")
        .expect("the start is logged");
    assert_eq!(listening["level"], "INFO");
    assert!(listening["timestamp"].is_string());
}
