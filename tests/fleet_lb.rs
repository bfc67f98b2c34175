//! Load balancing a fleet (issue 14): the README's nginx and HAProxy configurations, read
//! from README.md with only the addresses replaced, run for real in front of three
//! instances of the binary on one Redis. A stream posted through the balancer (to any
//! instance) is known to all; one live channel's viewers land on one instance and cost the
//! origin one connection; HLS plays through the balancer; different stream ids spread over
//! the instances and requests without an id go round-robin.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::binary::{free_port, start};
use crate::util::origin::Origin;
use crate::util::redis::{require_redis, RedisServer};
use crate::util::temp_dir::TempDir;
use crate::util::{eventually, http_client, poll_for};

/// The header the tests' balancer adds (outside the README's block) to say which instance
/// answered: nginx's `$upstream_addr`, HAProxy's server address.
const BALANCED_TO: &str = "x-balanced-to";

const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// The body of the first fenced block of language `lang` in the README's "Running a fleet"
/// section.
fn readme_block(lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Running a fleet\n")
        .expect("README has a \"Running a fleet\" section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let fence = format!("```{lang}\n");
    let open = section
        .find(&fence)
        .unwrap_or_else(|| panic!("no ```{lang} block in \"Running a fleet\""))
        + fence.len();
    let len = section[open..].find("\n```").expect("the block is closed") + 1;
    section[open..open + len].to_string()
}

/// Replaces the lines of `block` that start (after indentation) with `prefix` by `with`,
/// one each, in order, keeping the indentation; panics unless there are exactly as many.
fn replace_lines(block: &str, prefix: &str, with: &[String]) -> String {
    let mut next = with.iter();
    let out: Vec<String> = block
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if !trimmed.starts_with(prefix) {
                return line.to_string();
            }
            let indent = &line[..line.len() - trimmed.len()];
            let new = next
                .next()
                .unwrap_or_else(|| panic!("more `{prefix}` lines than expected in {block}"));
            format!("{indent}{new}")
        })
        .collect();
    assert!(
        next.next().is_none(),
        "fewer `{prefix}` lines than {} in {block}",
        with.len()
    );
    out.join("\n") + "\n"
}

/// The README's nginx block, listening on `port` in front of `instances` (`host:port`),
/// inside a main configuration that keeps every file under `dir`.
fn nginx_config(port: u16, instances: &[String], dir: &str) -> String {
    let block = readme_block("nginx");
    let servers: Vec<String> = instances
        .iter()
        .map(|a| format!("server {a} max_fails=3 fail_timeout=10s;"))
        .collect();
    let block = replace_lines(&block, "server 10.0.0.", &servers);
    let block = replace_lines(&block, "listen 80;", &[format!("listen 127.0.0.1:{port};")]);
    format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {dir}/client_body;\n\
         proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\n\
         uwsgi_temp_path {dir}/uwsgi;\n\
         scgi_temp_path {dir}/scgi;\n\
         add_header X-Balanced-To $upstream_addr always;\n\
         {block}}}\n"
    )
}

/// The README's HAProxy block, listening on `port` in front of `instances`.
fn haproxy_config(port: u16, instances: &[String]) -> String {
    let block = readme_block("haproxy");
    let servers: Vec<String> = instances
        .iter()
        .enumerate()
        .map(|(i, a)| format!("server m3u{} {a} check inter 1s", i + 1))
        .collect();
    let block = replace_lines(&block, "server m3u", &servers);
    let block = replace_lines(&block, "bind :80", &[format!("bind 127.0.0.1:{port}")]);
    // The backend is the last section: the header goes there.
    format!("{block}    http-response set-header X-Balanced-To %[srv_name]\n")
}

/// Whether `program` runs here. Outside CI a missing one skips the test loudly; with `CI`
/// set it fails, since `.ci/run` installs it.
fn require(program: &str, version_flag: &str) -> bool {
    let found = Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} not found, and CI is set: the load-balancer tests must run in CI"
        );
        eprintln!("\n*** SKIPPED: {program} not found (install it to run this test) ***\n");
    }
    found
}

/// A load balancer process, killed on drop.
struct Balancer {
    child: Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Nginx,
    Haproxy,
}

impl Balancer {
    /// Starts `kind` with the README's configuration in front of `instances` and waits
    /// until `/health` answers through it. Like [`start`], a port taken meanwhile by
    /// another process makes it exit, and it is started again on another.
    async fn start(kind: Kind, instances: &[String]) -> Balancer {
        let http = http_client();
        for _ in 0..5 {
            let dir = TempDir::new("balancer");
            let port = free_port();
            let path = dir.path().display().to_string();
            let mut command = match kind {
                Kind::Nginx => {
                    let conf = format!("{path}/nginx.conf");
                    std::fs::write(&conf, nginx_config(port, instances, &path)).unwrap();
                    let mut c = Command::new("nginx");
                    c.args(["-p", &path, "-c", &conf, "-e", &format!("{path}/error.log")]);
                    c
                }
                Kind::Haproxy => {
                    let conf = format!("{path}/haproxy.cfg");
                    std::fs::write(&conf, haproxy_config(port, instances)).unwrap();
                    let mut c = Command::new("haproxy");
                    c.args(["-db", "-f", &conf]);
                    c
                }
            };
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the load balancer");
            let base = format!("http://127.0.0.1:{port}");
            let up = poll_for(Duration::from_secs(10), || {
                let exited = child.try_wait().unwrap().is_some();
                let health = http.get(format!("{base}/health")).send();
                async move {
                    if exited {
                        return Some(false);
                    }
                    let res = health.await.ok()?;
                    (res.status() == StatusCode::OK).then_some(true)
                }
            })
            .await;
            if up == Some(true) {
                return Balancer {
                    child,
                    base,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // The configuration itself is wrong: say so at once rather than retrying.
            assert!(
                !stderr.contains("emerg") || stderr.contains("Address already in use"),
                "the load balancer refused the README's configuration: {stderr}{log}"
            );
            assert!(
                !stderr.contains("ALERT") || stderr.contains("cannot bind"),
                "the load balancer refused the README's configuration: {stderr}{log}"
            );
        }
        panic!("the load balancer did not come up five times (no free port?)");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Three instances of the binary sharing one Redis (`--store redis`), so they share the
/// registry and the secret (a stream has the same id on each); killed on drop.
struct Fleet {
    children: Vec<Child>,
    bases: Vec<String>,
    _redis: RedisServer,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Fleet {
    async fn start() -> Fleet {
        let redis = RedisServer::start();
        let url = redis.url();
        let mut fleet = Fleet {
            children: vec![],
            bases: vec![],
            _redis: redis,
        };
        for _ in 0..3 {
            let (child, base) = start(|port| {
                let envs = vec![
                    ("M3U_PROXY_HOST", "127.0.0.1".into()),
                    ("M3U_PROXY_PORT", port.to_string()),
                    ("M3U_PROXY_STORE", "redis".into()),
                    ("REDIS_URL", url.clone()),
                    ("TRUSTED_PROXIES", "127.0.0.1".into()),
                    ("LOG_LEVEL", "warn".into()),
                ];
                (envs, vec![])
            })
            .await;
            fleet.children.push(child);
            fleet.bases.push(base);
        }
        fleet
    }

    /// `host:port` of each instance, as a load balancer lists them.
    fn addresses(&self) -> Vec<String> {
        self.bases
            .iter()
            .map(|b| b.trim_start_matches("http://").to_string())
            .collect()
    }

    /// Registers `url` through the balancer (on whichever instance it picks) and waits
    /// until every instance knows the stream; returns its id.
    async fn register(&self, lb: &Balancer, url: &str) -> String {
        let http = http_client();
        let res = http
            .post(lb.url("/streams"))
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "POST /streams: {}", res.status());
        let created: serde_json::Value = res.json().await.unwrap();
        let id = created["stream_id"].as_str().unwrap().to_string();
        for base in &self.bases {
            let known = http.get(format!("{base}/streams/{id}"));
            eventually(
                Duration::from_secs(2),
                "the stream known everywhere",
                || {
                    let known = known.try_clone().unwrap().send();
                    async move { (known.await.ok()?.status() == StatusCode::OK).then_some(()) }
                },
            )
            .await;
        }
        id
    }
}

fn balanced_to(res: &reqwest::Response) -> String {
    res.headers()
        .get(BALANCED_TO)
        .and_then(|v| v.to_str().ok())
        .expect("the balancer says which instance answered")
        .to_string()
}

/// Ten viewers of one live channel arriving through the balancer: all on one instance,
/// one upstream connection at the origin, every viewer receiving TS packets.
async fn ten_live_viewers_share_one_upstream(kind: Kind) {
    let origin = Origin::start().await;
    origin.live_ts("/live.ts", 200_000);
    let fleet = Fleet::start().await;
    let lb = Balancer::start(kind, &fleet.addresses()).await;
    let id = fleet.register(&lb, &origin.url("/live.ts")).await;
    // Registering may have probed the origin; count from here.
    let before = origin.hits("/live.ts");
    let http = http_client();
    let mut viewers = Vec::new();
    let mut instances = HashSet::new();
    for i in 0..10 {
        let res = http
            .get(lb.url(&format!("/stream/{id}?client_id=viewer-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "viewer {i}");
        instances.insert(balanced_to(&res));
        viewers.push(res);
    }
    assert_eq!(
        instances.len(),
        1,
        "one channel's viewers land on one instance: {instances:?}"
    );
    // Every viewer receives whole TS packets, through the balancer, as they arrive.
    for (i, viewer) in viewers.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 4 * 188 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), viewer.chunk())
                .await
                .unwrap_or_else(|_| panic!("viewer {i} stalled"))
                .unwrap()
                .expect("the live stream goes on");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got[0], 0x47, "viewer {i} starts at a TS packet");
        assert_eq!(got[188], 0x47, "viewer {i} gets whole packets");
    }
    assert_eq!(
        origin.hits("/live.ts") - before,
        1,
        "ten viewers through the balancer cost the origin one upstream connection"
    );
    let (first, rest) = viewers.split_at_mut(1);
    // The shared upstream still serves everyone a moment later, with no second request.
    for viewer in first.iter_mut().chain(rest.iter_mut()) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), viewer.chunk())
            .await
            .expect("still flowing")
            .unwrap();
        assert!(chunk.is_some_and(|c| !c.is_empty()));
    }
    assert_eq!(origin.hits("/live.ts") - before, 1);
    // The instance that served them has the ten viewers.
    let served = instances.into_iter().next().unwrap();
    let base = instance_base(&fleet, kind, &served);
    let clients: serde_json::Value = http
        .get(format!("{base}/clients"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: HashSet<&str> = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    for i in 0..10 {
        let name = format!("viewer-{i}");
        assert!(ids.contains(name.as_str()), "{name} on {base}: {clients}");
    }
}

/// The base URL of the instance a balancer's header names: nginx gives its address,
/// HAProxy the server name `m3uN` (N counting from 1, in the order of the instances).
fn instance_base<'a>(fleet: &'a Fleet, kind: Kind, named: &str) -> &'a str {
    let index = match kind {
        Kind::Nginx => fleet
            .bases
            .iter()
            .position(|b| b.ends_with(named))
            .expect("the balancer's upstream is one of the instances"),
        Kind::Haproxy => named["m3u".len()..].parse::<usize>().unwrap() - 1,
    };
    &fleet.bases[index]
}

/// Different stream ids spread over the instances, each id always on the same one; the
/// references behind a playlist follow it; requests without an id go round-robin.
async fn ids_spread_and_the_rest_goes_round_robin(kind: Kind) {
    let fleet = Fleet::start().await;
    let lb = Balancer::start(kind, &fleet.addresses()).await;
    let http = http_client();
    let mut used = HashSet::new();
    for i in 0..12 {
        // A closed port and an .m3u8 URL: registering never probes, playing gives 502.
        let id = fleet
            .register(&lb, &format!("http://127.0.0.1:9/fleet-lb/{i}/index.m3u8"))
            .await;
        let mut seen = HashSet::new();
        for path in [
            format!("/hls/{id}/playlist.m3u8"),
            format!("/stream/{id}"),
            format!("/hls/{id}/playlist.m3u8?client_id=again"),
        ] {
            let res = http.get(lb.url(&path)).send().await.unwrap();
            assert!(
                res.status() == StatusCode::BAD_GATEWAY || res.status().is_redirection(),
                "{path}: {}",
                res.status()
            );
            seen.insert(balanced_to(&res));
        }
        assert_eq!(seen.len(), 1, "stream {id} on one instance: {seen:?}");
        used.extend(seen);
    }
    assert!(
        used.len() >= 2,
        "twelve ids use more than one of three instances: {used:?}"
    );
    let health: HashSet<String> = {
        let mut answered = HashSet::new();
        for _ in 0..6 {
            let res = http.get(lb.url("/health")).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            answered.insert(balanced_to(&res));
        }
        answered
    };
    assert_eq!(
        health.len(),
        3,
        "id-less requests go round-robin: {health:?}"
    );
}

#[tokio::test]
async fn nginx_ten_live_viewers_of_one_channel_cost_one_upstream_connection() {
    if !require("nginx", "-v") || !require_redis() {
        return;
    }
    ten_live_viewers_share_one_upstream(Kind::Nginx).await;
}

#[tokio::test]
async fn nginx_stream_ids_spread_over_the_instances_and_the_api_goes_round_robin() {
    if !require("nginx", "-v") || !require_redis() {
        return;
    }
    ids_spread_and_the_rest_goes_round_robin(Kind::Nginx).await;
}

#[tokio::test]
async fn haproxy_ten_live_viewers_of_one_channel_cost_one_upstream_connection() {
    if !require("haproxy", "-v") || !require_redis() {
        return;
    }
    ten_live_viewers_share_one_upstream(Kind::Haproxy).await;
}

#[tokio::test]
async fn haproxy_stream_ids_spread_over_the_instances_and_the_api_goes_round_robin() {
    if !require("haproxy", "-v") || !require_redis() {
        return;
    }
    ids_spread_and_the_rest_goes_round_robin(Kind::Haproxy).await;
}

/// HLS through nginx: the playlist is rewritten with references that resolve against the
/// balancer's URL, and the segments behind them are the origin's bytes, served by the
/// instance that served the playlist.
#[tokio::test]
async fn nginx_hls_plays_through_the_balancer_on_one_instance() {
    if !require("nginx", "-v") || !require_redis() {
        return;
    }
    let origin = Origin::start().await;
    let segments: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            (0..100)
                .flat_map(|p| {
                    let mut packet = vec![i; 188];
                    packet[0] = 0x47;
                    packet[1] = p;
                    packet
                })
                .collect()
        })
        .collect();
    let mut media = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n");
    for (i, body) in segments.iter().enumerate() {
        origin.put(&format!("/tv/seg{i}.ts"), body.clone(), "video/mp2t");
        media.push_str(&format!("#EXTINF:4.0,\nseg{i}.ts\n"));
    }
    media.push_str("#EXT-X-ENDLIST\n");
    origin.put("/tv/index.m3u8", media, MPEGURL);
    let fleet = Fleet::start().await;
    let lb = Balancer::start(Kind::Nginx, &fleet.addresses()).await;
    let id = fleet.register(&lb, &origin.url("/tv/index.m3u8")).await;
    let http = http_client();

    let playlist_url = lb.url(&format!("/hls/{id}/playlist.m3u8?client_id=hls-viewer"));
    let res = http.get(&playlist_url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], MPEGURL);
    let instance = balanced_to(&res);
    let text = res.text().await.unwrap();
    let references: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(references.len(), 3, "{text}");
    for (i, reference) in references.iter().enumerate() {
        assert!(!reference.contains("/tv/"), "opaque: {reference}");
        let url = url::Url::parse(&playlist_url)
            .unwrap()
            .join(reference)
            .unwrap();
        assert!(url.as_str().starts_with(&lb.base), "{url}");
        let res = http.get(url.as_str()).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "segment {i}");
        assert_eq!(
            balanced_to(&res),
            instance,
            "segment {i} follows its playlist"
        );
        let body = res.bytes().await.unwrap();
        assert_eq!(body.as_ref(), segments[i].as_slice(), "segment {i} bytes");
    }
    // The viewer is one client of the instance that served it (named by client_id).
    let base = instance_base(&fleet, Kind::Nginx, &instance);
    let client = eventually(Duration::from_secs(2), "the HLS client", || {
        let res = http.get(format!("{base}/clients/hls-viewer")).send();
        async move {
            let res = res.await.ok()?;
            (res.status() == StatusCode::OK).then_some(())
        }
    });
    client.await;
}
