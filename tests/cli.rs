//! The `m3u-client` binary against a spawned proxy and origin: every command's output and
//! exit code, `--json` parsed back into the model types, the failure lines (server down,
//! unknown id, refused request, bad arguments), and `monitor` under a pseudo-terminal.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m3u_proxy::model::{
    ClientInfo, ClientList, FailoverDone, Health, Stats, StreamCreated, StreamDeleted,
    StreamDetail, StreamList, StreamType,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::util::origin::Origin;
use crate::util::{create_stream_at, eventually, refused_addr, Proxy};

const BIN: &str = env!("CARGO_BIN_EXE_m3u-client");
/// The ANSI sequence `monitor` starts each frame with on a terminal.
const CLEAR: &str = "\x1b[H\x1b[2J";

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the CLI against `server` with a clean environment (no token, no server variable).
async fn cli(server: &str, args: &[&str]) -> Run {
    cli_with_env(server, args, &[]).await
}

async fn cli_with_env(server: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(BIN);
    command
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("M3U_PROXY_URL")
        .env_remove("API_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("m3u-client finished")
        .expect("m3u-client ran");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// A successful run's stdout.
fn success(run: Run) -> String {
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
    run.stdout
}

/// A failed run's single stderr line, after checking the exit code and silence on stdout.
fn failure(run: Run, code: i32) -> String {
    assert_eq!(run.code, code, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    run.stderr.trim_end().to_owned()
}

fn parse<T: DeserializeOwned>(run: Run) -> T {
    let text = success(run);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The cells of a table row (columns are separated by two or more spaces).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect()
}

fn row<'a>(table: &'a str, first_cell: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(cells)
        .find(|cells| cells.first() == Some(&first_cell))
        .unwrap_or_else(|| panic!("no row {first_cell} in\n{table}"))
}

/// A server URL that refuses connections while the guard lives.
fn closed_port_url() -> (tokio::net::TcpSocket, String) {
    let (guard, addr) = refused_addr();
    (guard, format!("http://{addr}"))
}

/// Polls `GET /stats` until the proxy reports at least `bytes` served by `stream_id`;
/// counters reach the API shortly after the bytes reach the player.
async fn wait_for_served(proxy: &Proxy, stream_id: &str, bytes: u64) {
    let what = format!("stream {stream_id} reporting {bytes} bytes served");
    eventually(Duration::from_secs(5), &what, || async {
        let stats: Stats = serde_json::from_value(proxy.get_json("/stats").await).unwrap();
        let served = stats
            .streams
            .iter()
            .find(|s| s.stream_id == stream_id)
            .map_or(0, |s| s.total_bytes_served);
        (served >= bytes).then_some(())
    })
    .await;
}

async fn watch(proxy: &Proxy, stream_id: &str, client_id: &str) -> usize {
    let response = proxy
        .http
        .get(format!(
            "{}/stream/{stream_id}?client_id={client_id}",
            proxy.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().len()
}

#[tokio::test]
async fn create_list_info_failover_delete() {
    let origin = Origin::start().await;
    for path in ["/a/movie.mp4", "/b/movie.mp4", "/c/solo.mp4"] {
        origin.put(path, vec![7u8; 4096], "video/mp4");
    }
    let (primary, backup, solo) = (
        origin.url("/a/movie.mp4"),
        origin.url("/b/movie.mp4"),
        origin.url("/c/solo.mp4"),
    );
    let proxy = Proxy::start().await;
    let server = proxy.base.as_str();

    let create_args = [
        "create",
        &primary,
        "--failover",
        &backup,
        "--user-agent",
        "TestAgent/1.0",
        "--header",
        "Referer: http://site.example/",
        "--header",
        "X-Secret:hunter2",
    ];
    let created = success(cli(server, &create_args).await);
    let first = created.lines().next().unwrap();
    let id = first
        .strip_prefix("Created stream ")
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let base = server.trim_end_matches('/');
    for part in [
        format!("Play at     {base}/stream/{id}"),
        "Type        direct".to_owned(),
        format!("Failover    {backup}"),
        "User agent  TestAgent/1.0".to_owned(),
    ] {
        assert!(created.contains(&part), "{part:?} missing in\n{created}");
    }

    // Same URL again: same id, reported as an update (the API answers 200, not 201).
    let again = success(cli(server, &create_args).await);
    assert!(
        again.starts_with(&format!("Updated existing stream {id}\n")),
        "{again}"
    );
    let again: StreamCreated = parse(cli(server, &[&["--json"][..], &create_args].concat()).await);
    assert_eq!(again.stream_id, id);
    assert_eq!(again.stream_type, StreamType::Direct);
    assert_eq!(again.failover_urls, vec![backup.clone()]);
    assert_eq!(again.user_agent.as_deref(), Some("TestAgent/1.0"));

    let list = success(cli(server, &["list"]).await);
    let cols = row(&list, &id);
    assert_eq!(cols[1], "direct", "{list}");
    assert_eq!(cols[3], "0 B", "{list}");
    assert_eq!(list.lines().last(), Some("1 stream"), "{list}");
    let list: StreamList = parse(cli(server, &["list", "--json"]).await);
    assert_eq!(list.total, 1);
    assert_eq!(list.streams[0].stream_id, id);

    let info = success(cli(server, &["info", &id]).await);
    for part in [
        format!("Stream         {id}"),
        format!("Original URL   {primary}"),
        format!("Current URL    {primary} (#1 of 2)"),
        format!("Failover URLs  {backup}"),
        "(values hidden)".to_owned(),
        "No clients.".to_owned(),
    ] {
        assert!(info.contains(&part), "{part:?} missing in\n{info}");
    }
    assert!(info.to_lowercase().contains("referer"), "{info}");
    assert!(
        !info.contains("hunter2"),
        "header values must stay hidden:\n{info}"
    );
    let detail: StreamDetail = parse(cli(server, &["info", &id, "--json"]).await);
    assert_eq!(detail.stream.stream_id, id);
    assert_eq!(detail.stream.failover_urls, vec![backup.clone()]);

    let switched = success(cli(server, &["failover", &id]).await);
    assert_eq!(
        switched,
        format!("Stream {id} switched to URL #2: {backup}\n  (was {primary})\n")
    );
    let info = success(cli(server, &["info", &id]).await);
    assert!(
        info.contains(&format!("Current URL    {backup} (#2 of 2)")),
        "{info}"
    );

    // A stream without backups: the server's 400 becomes one line and exit code 1.
    let solo_id = proxy.create_stream(&solo).await["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = failure(cli(server, &["failover", &solo_id]).await, 1);
    assert!(
        line.starts_with("error: ") && line.ends_with("(HTTP 400)"),
        "{line}"
    );

    let deleted = success(cli(server, &["delete", &id]).await);
    assert_eq!(deleted, format!("Deleted stream {id}\n"));
    let line = failure(cli(server, &["info", &id]).await, 1);
    assert_eq!(line, format!("error: stream not found: {id}"));
    let line = failure(cli(server, &["delete", &id]).await, 1);
    assert_eq!(line, format!("error: stream not found: {id}"));

    let deleted: StreamDeleted = parse(cli(server, &["--json", "delete", &solo_id]).await);
    assert_eq!(deleted.stream_id, solo_id);
    let list = success(cli(server, &["list"]).await);
    assert_eq!(list, "No streams.\n");
}

#[tokio::test]
async fn failover_json_reports_the_switch() {
    let origin = Origin::start().await;
    origin.put("/a.mp4", vec![1u8; 1024], "video/mp4");
    origin.put("/b.mp4", vec![2u8; 1024], "video/mp4");
    let proxy = Proxy::start().await;
    let created: StreamCreated = parse(
        cli(
            &proxy.base,
            &[
                "create",
                "--json",
                &origin.url("/a.mp4"),
                "--failover",
                &origin.url("/b.mp4"),
            ],
        )
        .await,
    );
    let done: FailoverDone =
        parse(cli(&proxy.base, &["failover", &created.stream_id, "--json"]).await);
    assert_eq!(done.stream_id, created.stream_id);
    assert_eq!(done.previous_url, origin.url("/a.mp4"));
    assert_eq!(done.current_url, origin.url("/b.mp4"));
    assert_eq!(done.failover_index, 1);
}

#[tokio::test]
async fn stats_clients_and_health_show_what_was_watched() {
    let origin = Origin::start().await;
    origin.put("/movie.mp4", vec![9u8; 100 * 1024], "video/mp4");
    let proxy = Proxy::start().await;
    let server = proxy.base.as_str();
    let id = proxy.create_stream(&origin.url("/movie.mp4")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(watch(&proxy, &id, "viewer-1").await, 100 * 1024);
    wait_for_served(&proxy, &id, 100 * 1024).await;

    let stats = success(cli(server, &["stats"]).await);
    assert!(stats.contains("102.4 kB"), "{stats}");
    let stream_row = row(&stats, &id);
    assert_eq!(stream_row[3], "102.4 kB", "{stats}");
    let client_row = row(&stats, "viewer-1");
    assert_eq!(client_row[1], id, "{stats}");
    assert_eq!(client_row[3], "102.4 kB", "{stats}");
    let stats: Stats = parse(cli(server, &["stats", "--json"]).await);
    assert_eq!(stats.proxy.total_bytes_served, 100 * 1024);
    assert_eq!(stats.streams.len(), 1);

    let clients = success(cli(server, &["clients"]).await);
    let viewer = row(&clients, "viewer-1");
    assert_eq!(viewer[1], id, "{clients}");
    assert_eq!(viewer[2], "127.0.0.1", "{clients}");
    assert_eq!(viewer[3], "102.4 kB", "{clients}");
    assert_eq!(clients.lines().last(), Some("1 client"), "{clients}");
    let list: ClientList = parse(cli(server, &["clients", "--json"]).await);
    assert_eq!(list.total, 1);
    assert_eq!(list.clients[0].bytes_served, 100 * 1024);

    let one = success(cli(server, &["clients", "viewer-1"]).await);
    for part in [
        "Client       viewer-1".to_owned(),
        format!("Stream       {id}"),
        "IP address   127.0.0.1".to_owned(),
        "Served       102.4 kB".to_owned(),
    ] {
        assert!(one.contains(&part), "{part:?} missing in\n{one}");
    }
    let one: ClientInfo = parse(cli(server, &["--json", "clients", "viewer-1"]).await);
    assert_eq!(one.client_id, "viewer-1");
    assert_eq!(one.stream_id.as_deref(), Some(id.as_str()));
    let line = failure(cli(server, &["clients", "nobody"]).await, 1);
    assert_eq!(line, "error: client not found: nobody");

    let info = success(cli(server, &["info", &id]).await);
    assert_eq!(row(&info, "viewer-1")[3], "102.4 kB", "{info}");

    let health = success(cli(server, &["health"]).await);
    assert_eq!(health.lines().count(), 1, "{health}");
    assert!(health.contains(" m3u-proxy "), "{health}");
    assert!(health.contains("1 stream, 1 client"), "{health}");
    let health: Health = parse(cli(server, &["health", "--json"]).await);
    assert_eq!(health.streams, 1);
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn a_server_that_is_down_is_one_line_and_exit_code_3() {
    let (_guard, down) = closed_port_url();
    for args in [
        &["list"][..],
        &["health"],
        &["stats", "--json"],
        &["info", "abc"],
        &["create", "http://127.0.0.1:1/x.m3u8"],
    ] {
        let line = failure(cli(&down, args).await, 3);
        assert!(
            line.starts_with(&format!("error: cannot reach m3u-proxy at {down}: ")),
            "{args:?}: {line}"
        );
    }
    // The server address also comes from the environment.
    let mut command = Command::new(BIN);
    let out = command
        .arg("health")
        .env("M3U_PROXY_URL", &down)
        .env_remove("API_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&down));
}

#[tokio::test]
async fn the_token_comes_from_the_flag_or_api_token() {
    let proxy = Proxy::start_with(|config| config.api_token = Some("s3cret".into())).await;
    let server = proxy.base.as_str();
    let line = failure(cli(server, &["list"]).await, 1);
    assert!(
        line.starts_with("error: ") && line.ends_with("(HTTP 401); pass --token or set API_TOKEN"),
        "{line}"
    );
    let run = cli(server, &["--token", "wrong", "stats"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        success(cli(server, &["list", "--token", "s3cret"]).await),
        "No streams.\n"
    );
    let run = cli_with_env(server, &["list"], &[("API_TOKEN", "s3cret")]).await;
    assert_eq!(success(run), "No streams.\n");
    // /health stays open for load balancers, and so does the command.
    let health: Health = parse(cli(server, &["health", "--json"]).await);
    assert_eq!(health.streams, 0);
}

#[tokio::test]
async fn bad_arguments_are_usage_errors_and_send_nothing() {
    let proxy = Proxy::start().await;
    let run = cli(
        &proxy.base,
        &[
            "create",
            "http://127.0.0.1:1/a.ts",
            "--header",
            "no-colon-here",
        ],
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("NAME:VALUE"), "{run:?}");
    let list: StreamList = parse(cli(&proxy.base, &["list", "--json"]).await);
    assert_eq!(list.total, 0, "a rejected command must not create anything");

    let line = failure(cli("localhost:8001", &["list"]).await, 2);
    assert!(line.contains("invalid server URL"), "{line}");
    let line = failure(cli(&proxy.base, &["info", ".."]).await, 2);
    assert_eq!(line, "error: invalid id \"..\"");
    let line = failure(
        cli(&proxy.base, &["info", "no-such-stream", "--json"]).await,
        1,
    );
    assert_eq!(line, "error: stream not found: no-such-stream");
    let run = cli(&proxy.base, &["monitor", "--interval", "0"]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

#[tokio::test]
async fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let script = success(cli("http://127.0.0.1:1", &["completions", shell]).await);
        assert!(script.contains("m3u-client"), "{shell}");
        assert!(script.contains("monitor"), "{shell}");
        assert!(script.contains("failover"), "{shell}");
        assert!(script.contains("user-agent"), "{shell}");
    }
    let run = cli("http://127.0.0.1:1", &["completions", "tcsh"]).await;
    assert_eq!(run.code, 2);
}

/// Everything `monitor` wrote, read in the background while the test drives it.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<String>>);

impl Screen {
    fn capture(&self, mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let screen = self.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                screen.0.lock().unwrap().push_str(&text);
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// The complete frames so far (the last one may still be arriving, so it is left out).
    fn frames(&self) -> Vec<String> {
        let text = self.text().replace('\r', "");
        let mut frames: Vec<String> = text.split(CLEAR).skip(1).map(str::to_owned).collect();
        frames.pop();
        frames
    }

    /// Waits until a complete frame satisfies `want`, and returns it.
    async fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let what = format!("a frame with {what}");
        eventually(Duration::from_secs(15), &what, || {
            let found = self.frames().into_iter().rev().find(|f| want(f));
            async move { found }
        })
        .await
    }

    /// Waits until `count` complete frames exist.
    async fn wait_frames(&self, count: usize) {
        let what = format!("{count} frames");
        eventually(Duration::from_secs(10), &what, || {
            let enough = self.frames().len() >= count;
            async move { enough.then_some(()) }
        })
        .await;
    }

    /// Waits until `count` complete lines were printed (`--json` output has no frames).
    async fn wait_lines(&self, count: usize) {
        let what = format!("{count} lines");
        eventually(Duration::from_secs(10), &what, || {
            let enough = self.text().lines().count() >= count;
            async move { enough.then_some(()) }
        })
        .await;
    }
}

/// Parses a size cell such as `195.3 kB` back into bytes.
fn size(cell: &str) -> f64 {
    let (number, unit) = cell.split_once(' ').unwrap();
    let factor = match unit {
        "B" => 1.0,
        "kB" => 1000.0,
        "MB" => 1_000_000.0,
        other => panic!("unit {other}"),
    };
    number.parse::<f64>().unwrap() * factor
}

/// Starts `m3u-client monitor` inside `script`, which gives it a pseudo-terminal.
/// `script` runs the command with `$SHELL -c`; `exec` replaces that shell, so Ctrl-C
/// reaches only the monitor whatever the shell is (dash, CI's default, would otherwise
/// die of the SIGINT itself and report 130).
fn spawn_monitor_in_pty(server: &str, screen: &Screen) -> tokio::process::Child {
    let mut child = Command::new("script")
        .args([
            "-qfec",
            &format!("exec {BIN} --server {server} monitor --interval 1"),
            "/dev/null",
        ])
        .env_remove("M3U_PROXY_URL")
        .env_remove("API_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script(1) from util-linux");
    screen.capture(child.stdout.take().unwrap());
    child
}

/// Types Ctrl-C into the terminal and expects a clean exit.
async fn press_ctrl_c(mut child: tokio::process::Child) {
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\x03").await.unwrap();
    stdin.flush().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("monitor ends on Ctrl-C")
        .unwrap();
    assert!(status.success(), "monitor exited with {status}");
}

#[tokio::test]
async fn monitor_redraws_in_place_with_rising_bytes() {
    let origin = Origin::start().await;
    origin.put("/live.mp4", vec![3u8; 200 * 1024], "video/mp4");
    let proxy = Proxy::start().await;
    let id = proxy.create_stream(&origin.url("/live.mp4")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let screen = Screen::default();
    let child = spawn_monitor_in_pty(&proxy.base, &screen);
    screen.wait_frames(1).await;
    // Between refreshes a viewer fetches the whole file, so each frame shows more bytes.
    for round in 1..=3u64 {
        let seen = screen.frames().len();
        assert_eq!(watch(&proxy, &id, "viewer-1").await, 200 * 1024);
        wait_for_served(&proxy, &id, round * 200 * 1024).await;
        screen.wait_frames(seen + 2).await;
    }
    press_ctrl_c(child).await;

    let frames = screen.frames();
    let served: Vec<f64> = frames
        .iter()
        .map(|frame| size(row(frame, &id)[3]))
        .collect();
    assert!(
        served.windows(2).all(|w| w[0] <= w[1]),
        "bytes went down: {served:?}"
    );
    let mut distinct = served.clone();
    distinct.dedup();
    assert!(distinct.len() >= 4, "bytes did not rise: {served:?}");
    assert_eq!(*served.last().unwrap(), 600.0 * 1024.0);
    assert_eq!(served[0], 0.0, "{served:?}");
    // The rate column: unknown on the first frame, then measured between refreshes.
    assert_eq!(row(&frames[0], &id)[4], "-");
    assert!(
        frames.iter().any(|f| {
            let rate = row(f, &id)[4];
            rate.ends_with("kB/s") && size(rate.trim_end_matches("/s")) > 0.0
        }),
        "no measured rate in {frames:#?}"
    );
    assert!(
        frames[0].starts_with("m3u-proxy monitor  "),
        "{}",
        frames[0]
    );
}

#[tokio::test]
async fn monitor_keeps_going_while_the_server_is_down() {
    let (_guard, down) = closed_port_url();
    let screen = Screen::default();
    let child = spawn_monitor_in_pty(&down, &screen);
    screen.wait_frames(2).await;
    press_ctrl_c(child).await;
    for frame in screen.frames() {
        assert!(
            frame.contains("\nserver unreachable, retrying...\n"),
            "{frame}"
        );
        assert!(
            frame.contains(&format!("cannot reach m3u-proxy at {down}")),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn monitor_json_prints_one_stats_object_per_refresh() {
    let proxy = Proxy::start().await;
    proxy.create_stream("http://127.0.0.1:1/x.m3u8").await;
    let mut child = Command::new(BIN)
        .args([
            "--server",
            &proxy.base,
            "--json",
            "monitor",
            "--interval",
            "1",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let screen = Screen::default();
    screen.capture(child.stdout.take().unwrap());
    eventually(Duration::from_secs(5), "two lines of output", || {
        let two = screen.text().lines().count() >= 2;
        async move { two.then_some(()) }
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let text = screen.text();
    assert!(
        !text.contains(CLEAR),
        "no screen control outside a terminal"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for line in lines {
        let stats: Stats = serde_json::from_str(line).unwrap();
        assert_eq!(stats.proxy.total_streams, 1);
    }
}

/// Serves a fresh proxy (empty registry) on an already bound listener, like a restart.
fn serve(listener: tokio::net::TcpListener) -> tokio::sync::oneshot::Sender<()> {
    let config = m3u_proxy::config::Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        secret: Some("test-secret".into()),
        ..m3u_proxy::config::Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        m3u_proxy::server::serve(listener, config, async {
            let _ = stopped.await;
        })
        .await
        .expect("proxy serves");
    });
    stop
}

#[tokio::test]
async fn monitor_survives_a_server_restart() {
    // The restarted server must get the same port back. A port the kernel hands out for
    // outgoing connections could be taken in between by any socket on this machine, so
    // the port comes from below that range, and the rebind is retried while the first
    // server's socket goes away.
    let listener = listener_below_ephemeral_ports().await;
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let http = crate::util::http_client();
    let stop = serve(listener);
    let before = create_stream_at(&http, &base, "http://127.0.0.1:1/before.m3u8").await;
    let before = before["stream_id"].as_str().unwrap().to_owned();
    let screen = Screen::default();
    let child = spawn_monitor_in_pty(&base, &screen);
    screen
        .wait_for("the first stream", |f| f.contains(&before))
        .await;

    let _ = stop.send(());
    screen
        .wait_for("the retry notice", |f| {
            f.contains("server unreachable, retrying...")
        })
        .await;

    let listener = eventually(Duration::from_secs(10), "the same port again", || async {
        tokio::net::TcpListener::bind(addr).await.ok()
    })
    .await;
    let _stop = serve(listener);
    let created = create_stream_at(&http, &base, "http://127.0.0.1:1/after.m3u8").await;
    let created: StreamCreated = serde_json::from_value(created).unwrap();
    let frame = screen
        .wait_for("the restarted server's stream", |f| {
            f.contains(&created.stream_id)
        })
        .await;
    assert!(!frame.contains("unreachable"), "{frame}");
    press_ctrl_c(child).await;
}

/// A loopback listener on a port below the kernel's range for outgoing connections
/// (`ip_local_port_range`), which no other socket takes unless it asks for that port.
async fn listener_below_ephemeral_ports() -> tokio::net::TcpListener {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = first_ephemeral.saturating_sub(12_000).max(1024);
    for _ in 0..100 {
        let port = rand::random_range(low..first_ephemeral);
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
    panic!("no free port in {low}..{first_ephemeral}");
}

#[tokio::test]
async fn usage_errors_are_one_error_line_and_at_most_a_hint() {
    let proxy = Proxy::start().await;
    for args in [
        &["lsit"][..],
        &[],
        &["create"],
        &["list", "--bogus"],
        &["monitor", "--interval", "0"],
        &["completions", "tcsh"],
    ] {
        let run = cli(&proxy.base, args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert!(matches!(lines.len(), 1 | 2), "{args:?}: {run:?}");
        assert!(lines[0].starts_with("error: "), "{run:?}");
        if let Some(hint) = lines.get(1) {
            assert!(hint.starts_with("hint: "), "{run:?}");
        }
    }
    let run = cli(&proxy.base, &["lsit"]).await;
    assert!(
        run.stderr.contains("'list'"),
        "clap's suggestion is kept: {run:?}"
    );
    // --help and --version still print in full, and succeed.
    let help = success(cli(&proxy.base, &["--help"]).await);
    assert!(help.lines().count() > 10, "{help}");
}

#[tokio::test]
async fn a_malformed_id_is_a_usage_error_and_sends_nothing() {
    let proxy = Proxy::start().await;
    for id in ["not/valid", "a?b", "with space"] {
        let line = failure(cli(&proxy.base, &["info", id]).await, 2);
        assert_eq!(line, format!("error: invalid id {id:?}"));
    }
    let line = failure(cli(&proxy.base, &["clients", "x/y"]).await, 2);
    assert_eq!(line, "error: invalid id \"x/y\"");
}

#[tokio::test]
async fn a_server_that_is_not_m3u_proxy_says_so_with_exit_code_4() {
    // An ordinary web server: 404 pages for every API route, a page for /health.
    let other = Origin::start().await;
    other.put("/health", "<html>it works</html>", "text/html");
    let server = other.url("");
    let server = server.trim_end_matches('/');
    for args in [
        &["list"][..],
        &["info", "abc"],
        &["health"],
        &["stats", "--json"],
    ] {
        let line = failure(cli(server, args).await, 4);
        assert!(
            line.starts_with(&format!("error: {server} does not look like m3u-proxy: ")),
            "{args:?}: {line}"
        );
    }
    let line = failure(cli(server, &["info", "abc"]).await, 4);
    assert!(line.ends_with("HTTP 404 Not Found"), "{line}");
}

#[tokio::test]
async fn monitor_json_prints_the_servers_json_as_sent_and_a_json_line_per_failure() {
    let proxy = Proxy::start().await;
    let (_guard, down) = closed_port_url();
    for (server, want) in [
        (&proxy.base, "{\"proxy\":{\"version\":"),
        (&down, "{\"error\":"),
    ] {
        let mut child = Command::new(BIN)
            .args(["--server", server, "--json", "monitor", "--interval", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let screen = Screen::default();
        screen.capture(child.stdout.take().unwrap());
        screen.wait_lines(2).await;
        child.kill().await.unwrap();
        let text = screen.text();
        for line in text.lines() {
            // The server's own key order (Stats is proxy, streams, clients), not sorted.
            assert!(line.starts_with(want), "{line}");
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            if server == &down {
                let error = value["error"].as_str().unwrap();
                assert!(error.starts_with("cannot reach m3u-proxy"), "{error}");
            }
        }
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
    }
}
