//! `tessera node` as real processes: three nodes with mock attestation on loopback, keys
//! from `tessera keygen`, driven by `tessera kv` and `tessera status`; and configs that must
//! be refused with a message naming the field.
//!
//! Synchronisation is on what the processes say: each node's "ready" line on stdout, and
//! `tessera status` polled until it shows a leader, under a deadline. Children are killed
//! on every path by a guard.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod pccs_server;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const DEADLINE: Duration = Duration::from_secs(60);
const POLL_PAUSE: Duration = Duration::from_millis(200);

/// Running nodes; killed (and reaped) when dropped, whatever happened.
struct Nodes {
    children: Vec<Child>,
    stdout: Vec<mpsc::Receiver<String>>,
    stderr_files: Vec<PathBuf>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Nodes {
    fn logs(&self) -> String {
        self.stderr_files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- node {i} stderr (tail) ---\n{}\n", tail.join("\n"))
            })
            .collect()
    }

    /// Waits for a stdout line of node `i` that contains `needle`.
    fn wait_line(&self, i: usize, needle: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout[i].recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "node {i} printed no line with {needle:?} in time\n{}",
                    self.logs()
                ),
            }
        }
    }
}

fn tessera(args: &[&str]) -> Output {
    Command::new(TESSERA)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tessera")
}

/// The mock policy the nodes run: clients verify the nodes' tickets against it.
const MOCK_POLICY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/mock.toml");

/// `tessera kv …` or `tessera status …`, checking the node's attestation against the mock
/// policy (as a user does with `--policy`).
fn client(args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--policy", MOCK_POLICY_FILE]);
    tessera(&all)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `out` failed with exit status 2 and said `expected` on stderr.
fn assert_exit_2_saying(out: &Output, what: &str, expected: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains(expected),
        "{what}: want {expected:?} in {}",
        text(&out.stderr)
    );
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = tessera(&["keygen", "--out", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "keygen: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "node id is 64 hex: {id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "keygen writes private files");
    }
    (path, id)
}

/// Free UDP ports on loopback (held until the caller drops the sockets).
fn free_ports(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind a free port"))
        .collect()
}

/// Where a node's identity comes from. It decides the storage too: a key file needs
/// durable storage (the config refuses `storage = "memory"` with one: a restart would keep
/// the identity and forget its vote), and a fresh key is what a TD does on every boot.
#[derive(Clone, Copy)]
enum Identity<'a> {
    /// `tessera keygen`'s file, with RocksDB storage.
    KeyFile(&'a Path),
    /// No key file: a fresh key each start, with memory storage.
    Fresh,
}

fn node_config(
    dir: &Path,
    i: usize,
    listen: &str,
    bootstrap: &[String],
    identity: Identity<'_>,
    allow: &str,
) -> PathBuf {
    // Identities are learnt as nodes start, so no node can name the founders in advance:
    // the first (given no peer) founds a group of one, which the others join (their sets
    // do not match bootstrap_expect's default of 3) and whose leader promotes them.
    let expect_line = if bootstrap.is_empty() {
        "bootstrap_expect = 1\n"
    } else {
        ""
    };
    let bootstrap: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    let (key_line, storage) = match identity {
        Identity::KeyFile(key) => (
            format!("secret_key_file = {:?}\n", key.display().to_string()),
            "rocksdb",
        ),
        Identity::Fresh => (String::new(), "memory"),
    };
    let config = format!(
        r#"data_dir = "data{i}"
listen = "{listen}"
{expect_line}bootstrap = [{bootstrap}]
group_key_file = "group.key"
policies = ["mock.toml"]
attestation = "mock"
{key_line}network_id = "node-process-test"
storage = "{storage}"
log_level = "info"
metrics = "127.0.0.1:0"

[timers]
tick_ms = 20
election_ticks = 10
heartbeat_ticks = 2

[client]
allow = {allow}
"#,
        bootstrap = bootstrap.join(", "),
    );
    let path = dir.join(format!("node{i}.toml"));
    std::fs::write(&path, config).expect("write config");
    path
}

fn spawn_node(config: &Path, stderr_file: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(TESSERA)
        .args(["node", "--config", config.to_str().expect("utf-8 path")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr_file).expect("stderr file"))
        .spawn()
        .expect("spawn tessera node");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

impl Nodes {
    fn new() -> Self {
        Self {
            children: Vec::new(),
            stdout: Vec::new(),
            stderr_files: Vec::new(),
        }
    }

    /// Starts one more `tessera node` on `config`, stderr of node `i` in
    /// `dir/node<i>.stderr`, and waits for its ready line.
    fn start(&mut self, dir: &Path, config: &Path, deadline: Instant) -> String {
        let i = self.spawn(dir, config);
        self.wait_line(i, "tessera node: ready", deadline)
    }

    /// Starts one more `tessera node` on `config` without waiting; returns its index.
    fn spawn(&mut self, dir: &Path, config: &Path) -> usize {
        let i = self.children.len();
        let stderr_file = dir.join(format!("node{i}.stderr"));
        let (child, rx) = spawn_node(config, &stderr_file);
        self.children.push(child);
        self.stdout.push(rx);
        self.stderr_files.push(stderr_file);
        i
    }

    /// Sends `signal` (`TERM`, `KILL`) to node `i` and waits for it to exit.
    fn stop(&mut self, i: usize, signal: &str, deadline: Instant) -> std::process::ExitStatus {
        let pid = self.children[i].id().to_string();
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(kill.success(), "kill -{signal} {pid}");
        loop {
            if let Some(status) = self.children[i].try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not exit after SIG{signal}\n{}",
                self.logs()
            );
            std::thread::sleep(POLL_PAUSE);
        }
    }
}

/// `<ip:port>` of the metrics server named in a ready line (`metrics=http://…/metrics`).
fn metrics_addr(ready: &str) -> String {
    let url = ready_field(ready, "metrics");
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {ready}"))
        .to_string()
}

/// The value of `name=` in a ready line.
fn ready_field(ready: &str, name: &str) -> String {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {ready}"))
        .to_string()
}

/// The rows of a `tessera status` table: member, role, then the other columns.
fn status_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("MEMBER"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.contains("STOPPED"))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read metrics");
    response
}

/// A scratch directory with the mock policy and a fresh group key (`tessera keygen`).
fn group_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("mock.toml"), tessera::cluster::MOCK_POLICY).expect("policy");
    let group = tessera(&[
        "keygen",
        "--group",
        "--out",
        d.join("group.key").to_str().expect("path"),
    ]);
    assert!(
        group.status.success(),
        "group keygen: {}",
        text(&group.stderr)
    );
    dir
}

/// Three nodes started one after another on reserved loopback ports; node `i` is given
/// the nodes listed in `bootstrap[i]` (started before it) as its bootstrap peers.
struct Three {
    nodes: Nodes,
    /// Each node's ready line.
    ready: Vec<String>,
    /// `<node id>@<addr>` of each node.
    peers: Vec<String>,
}

/// Node 0 has a key from `tessera keygen` and keeps its log in RocksDB when the build has
/// it (both stores in one group, and the keygen → config → node id path checked); the
/// others, and node 0 without RocksDB, take a fresh key each start and keep memory
/// storage, so their ids are learnt from their ready lines: that is why they start in turn.
fn start_three(d: &Path, bootstrap: [&[usize]; 3], allow: impl Fn(usize) -> String) -> Three {
    let node0_key = cfg!(feature = "rocksdb").then(|| keygen(d, "node0.key"));
    let sockets = free_ports(3);
    let addrs: Vec<String> = sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").to_string())
        .collect();
    drop(sockets);
    let deadline = Instant::now() + DEADLINE;
    let mut three = Three {
        nodes: Nodes::new(),
        ready: Vec::new(),
        peers: Vec::new(),
    };
    for i in 0..3 {
        let identity = match (&node0_key, i) {
            (Some((path, _)), 0) => Identity::KeyFile(path),
            _ => Identity::Fresh,
        };
        let known: Vec<String> = bootstrap[i]
            .iter()
            .map(|&j| three.peers[j].clone())
            .collect();
        let config = node_config(d, i, &addrs[i], &known, identity, &allow(i));
        let ready = three.nodes.start(d, &config, deadline);
        let id = ready_field(&ready, "node_id");
        if let (Some((_, key_id)), 0) = (&node0_key, i) {
            assert_eq!(&id, key_id, "the key file's id: {ready}");
        }
        assert_eq!(ready_field(&ready, "listen"), addrs[i], "{ready}");
        three.peers.push(format!("{id}@{}", addrs[i]));
        three.ready.push(ready);
    }
    three
}

#[test]
fn three_node_processes_replicate_and_report_status() {
    let dir = group_dir();
    let d = dir.path();

    let (client_key, client_id) = keygen(d, "client.key");
    let (intruder_key, intruder_id) = keygen(d, "intruder.key");
    // Each node is given all those started before it; the later ones dial in, so every
    // pair is bonded. Node 2 serves only the client keys it lists; the others serve
    // anyone. Every node takes the client key (and only it) as an operator's.
    let three = start_three(d, [&[], &[0], &[0, 1]], |i| {
        let allow = if i == 2 {
            format!("[{client_id:?}, {intruder_id:?}]")
        } else {
            "\"any\"".to_string()
        };
        format!("{allow}\noperators = [{client_id:?}]")
    });
    let (mut nodes, peers) = (three.nodes, three.peers);
    let deadline = Instant::now() + DEADLINE;
    let metrics: Vec<String> = three.ready.iter().map(|r| metrics_addr(r)).collect();

    // Poll the status of all three until they agree on a leader and are fully bonded.
    let all: Vec<&str> = peers.iter().flat_map(|p| ["--node", p.as_str()]).collect();
    let key_arg = client_key.to_str().expect("path");
    let mut status_args = vec!["status", "--key-file", key_arg];
    status_args.extend(&all);
    let rows = loop {
        let out = client(&status_args);
        let stdout = text(&out.stdout);
        let rows = status_rows(&stdout);
        let leaders = rows.iter().filter(|r| r[1] == "leader").count();
        let followers = rows.iter().filter(|r| r[1] == "follower").count();
        // Formation is over when all agree on the term and every bond is up (a bond
        // whose first dial failed comes up after a back-off).
        let settled = rows.iter().all(|r| r[2] == rows[0][2] && r[5] == "2");
        if out.status.success() && rows.len() == 3 && leaders == 1 && followers == 2 && settled {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "no leader (or not fully bonded) in time; last status:\n{stdout}{}\n{}",
            text(&out.stderr),
            nodes.logs()
        );
        std::thread::sleep(POLL_PAUSE);
    };
    let mut names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let mut ids: Vec<&str> = peers.iter().map(|p| &p[..10]).collect();
    names.sort();
    ids.sort();
    assert_eq!(names, ids, "members are named by their short node id");
    let term = &rows[0][2];
    assert!(rows.iter().all(|r| &r[2] == term), "one term: {rows:?}");
    assert!(
        rows.iter().all(|r| r[5] == "2"),
        "every node bonded with both others: {rows:?}"
    );
    assert!(
        rows.iter().all(|r| r[6] == "in"),
        "tickets unexpired: {rows:?}"
    );

    // A write through node 0, read linearizably through node 1.
    let put = client(&[
        "kv",
        "put",
        "greeting",
        "hello tessera",
        "--node",
        &peers[0],
    ]);
    assert!(
        put.status.success(),
        "put: {}{}",
        text(&put.stderr),
        nodes.logs()
    );
    assert_eq!(text(&put.stdout).trim(), "OK");
    let get = client(&["kv", "--node", &peers[1], "get", "greeting"]);
    assert!(get.status.success(), "get: {}", text(&get.stderr));
    assert_eq!(text(&get.stdout).trim_end(), "hello tessera");
    let missing = client(&["kv", "get", "absent", "--node", &peers[1]]);
    assert_eq!(missing.status.code(), Some(1), "absent key: exit 1");
    assert!(text(&missing.stderr).contains("not found"));

    // Concurrent clients through all three nodes (leader and followers) record a history
    // of gets, puts and compare-and-swaps that the checker accepts.
    let history = d.join("history.jsonl");
    let history_arg = history.to_str().expect("path");
    let mut workload = vec![
        "workload",
        "--clients",
        "4",
        "--duration",
        "2",
        "--keys",
        "2",
        "--seed",
        "7",
        "--check",
        "--history",
        history_arg,
        "--key-file",
        key_arg,
    ];
    for peer in &peers {
        workload.extend(["--node", peer.as_str()]);
    }
    let out = client(&workload);
    assert!(
        out.status.success() && text(&out.stdout).contains("the history is linearizable"),
        "workload: {}{}{}",
        text(&out.stdout),
        text(&out.stderr),
        nodes.logs()
    );
    let recorded = std::fs::read_to_string(&history).expect("history written");
    let completions = recorded.lines().filter(|l| l.contains("\"ok\"")).count();
    assert!(completions >= 10, "the clients made progress: {recorded}");
    let checked = tessera(&["lincheck", history_arg]);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stdout));

    // Node 2 refuses a client key it does not list, and serves the one it does.
    let refused = client(&["kv", "get", "greeting", "--node", &peers[2]]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stdout));
    assert!(
        text(&refused.stderr).contains("refused this client"),
        "{}",
        text(&refused.stderr)
    );
    let allowed = client(&[
        "kv",
        "get",
        "greeting",
        "--node",
        &peers[2],
        "--key-file",
        key_arg,
    ]);
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    assert_eq!(text(&allowed.stdout).trim_end(), "hello tessera");

    // Compare-and-swap and scan through a follower.
    let cas = client(&[
        "kv",
        "cas",
        "greeting",
        "--expect",
        "hello tessera",
        "--new",
        "bye",
        "--node",
        &peers[1],
    ]);
    assert!(cas.status.success(), "cas: {}", text(&cas.stderr));
    let stale = client(&[
        "kv",
        "cas",
        "greeting",
        "--expect",
        "hello tessera",
        "--new",
        "x",
        "--node",
        &peers[0],
    ]);
    assert_eq!(stale.status.code(), Some(1), "a stale cas does not match");
    assert!(
        text(&stale.stderr).contains("\"bye\""),
        "{}",
        text(&stale.stderr)
    );
    let scan = client(&["kv", "scan", "gr", "--node", &peers[0]]);
    assert_eq!(text(&scan.stdout), "greeting\tbye\n");

    // The client checks the node before it sends anything. A policy that does not name
    // the node's measurement (as for an impostor outside a TD): refused, nothing written.
    let other_image = d.join("other-image.toml");
    let mr_td = "6cb1c262a0f23144e19cfc8e2525aab9e31c16182aa342ad43d60ce499b49cedd4a7a761bbc286fd793f91a837b0027a";
    assert!(tessera::cluster::MOCK_POLICY.contains(mr_td));
    std::fs::write(
        &other_image,
        tessera::cluster::MOCK_POLICY.replace(mr_td, &"ab".repeat(48)),
    )
    .expect("policy");
    let other_image = other_image.to_str().expect("path");
    let wrong_image = tessera(&[
        "kv",
        "put",
        "greeting",
        "stolen",
        "--node",
        &peers[0],
        "--policy",
        other_image,
    ]);
    assert_exit_2_saying(
        &wrong_image,
        "another image",
        "did not prove it runs an image",
    );
    let wrong_network = client(&[
        "kv",
        "put",
        "greeting",
        "stolen",
        "--node",
        &peers[0],
        "--network",
        "another-network",
    ]);
    assert_exit_2_saying(&wrong_network, "another network", "another-network");
    let unchecked = tessera(&["kv", "get", "greeting", "--node", &peers[0]]);
    assert_exit_2_saying(&unchecked, "neither --policy nor --insecure", "--insecure");
    let insecure = tessera(&["kv", "get", "greeting", "--node", &peers[0], "--insecure"]);
    assert!(insecure.status.success(), "{}", text(&insecure.stderr));
    assert_eq!(
        text(&insecure.stdout).trim_end(),
        "bye",
        "the refused writes never reached the node"
    );

    // One node's view alone: three members, one leader.
    let one = client(&["status", "--node", &peers[1]]);
    let rows = status_rows(&text(&one.stdout));
    assert_eq!(rows.len(), 3, "{}", text(&one.stdout));
    assert_eq!(
        rows.iter().filter(|r| r[1] == "leader").count(),
        1,
        "{rows:?}"
    );

    // Metrics.
    let page = scrape(&metrics[0]);
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("\ntessera_bonds_live 2\n"), "{page}");
    assert!(page.contains("tessera_members{kind=\"voter\"} 3"), "{page}");
    assert!(page.contains("\ntessera_apply_lag "), "{page}");
    let roles: u32 = page
        .lines()
        .filter(|l| l.starts_with("tessera_role{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(99)
        })
        .sum();
    assert_eq!(roles, 1, "exactly one role is current: {page}");
    let refused_total = scrape(&metrics[2]);
    assert!(
        refused_total.contains("\ntessera_client_unauthorized_total 1\n"),
        "{refused_total}"
    );

    // Malformed requests are answered as such and the connection stays usable.
    malformed_requests_are_answered(&peers[0]);
    // A write sent again in its session (same sequence) applies once, through a follower
    // too; another client key's session of the same number is its own.
    retried_writes_apply_once(&peers);

    // Membership: listed by any member; a follower removed by an operator through the
    // leader (a key that is no operator's is refused, and nothing changes).
    let mut list = vec!["member", "list", "--key-file", key_arg];
    list.extend(&all);
    let list = client(&list);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed: Vec<Vec<String>> = text(&list.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(listed.len(), 3, "{}", text(&list.stdout));
    assert_eq!(
        listed
            .iter()
            .filter(|r| r.last().map(String::as_str) == Some("yes"))
            .count(),
        1
    );
    let follower = [1, 2]
        .into_iter()
        .find(|&i| {
            listed
                .iter()
                .any(|r| peers[i].starts_with(&r[0]) && r.last().map(String::as_str) != Some("yes"))
        })
        .expect("node 1 or node 2 follows");
    let name = &peers[follower][..10];
    let intruder_arg = intruder_key.to_str().expect("path");
    let mut remove = vec!["member", "remove", name];
    remove.extend(&all);
    let mut as_intruder = remove.clone();
    as_intruder.extend(["--key-file", intruder_arg]);
    let refused = client(&as_intruder);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("not an operator"),
        "{}",
        text(&refused.stderr)
    );
    let mut as_operator = remove.clone();
    as_operator.extend(["--key-file", key_arg]);
    let removed = client(&as_operator);
    assert!(
        removed.status.success(),
        "{}{}",
        text(&removed.stderr),
        nodes.logs()
    );
    assert_eq!(
        text(&removed.stdout).lines().skip(1).count(),
        2,
        "two members after the removal: {}",
        text(&removed.stdout)
    );
    assert!(
        !text(&removed.stdout).contains(name),
        "{name} still listed: {}",
        text(&removed.stdout)
    );

    // SIGTERM stops a node cleanly.
    let deadline = Instant::now() + DEADLINE;
    let status = nodes.stop(0, "TERM", deadline);
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    nodes.wait_line(0, "tessera node: stopped (SIGTERM)", deadline);
}

/// Node 2 is given only node 0 as a bootstrap peer (node 1 is given node 0 too, and node
/// 0 learns node 1 when it dials in): node 2 learns node 1 from node 0's catalog over
/// `tessera/discovery/1` and bonds with it as well.
#[test]
fn a_node_process_given_one_bootstrap_peer_bonds_with_the_others_through_discovery() {
    let dir = group_dir();
    let d = dir.path();
    let three = start_three(d, [&[], &[0], &[0]], |_| "\"any\"".to_string());
    let nodes = three.nodes;
    let deadline = Instant::now() + DEADLINE;
    let metrics: Vec<String> = three.ready.iter().map(|r| metrics_addr(r)).collect();
    // Polled under the deadline: bonds follow discovery rounds and handshakes.
    for (i, url) in metrics.iter().enumerate() {
        loop {
            let page = scrape(url);
            // Bonded with both others, and one group of three voters (not a group the
            // node with one bootstrap peer founded with it alone).
            if page.contains("\ntessera_bonds_live 2\n")
                && page.contains("\ntessera_members{kind=\"voter\"} 3\n")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not bond with both others in one group of three:\n{page}\n{}",
                nodes.logs()
            );
            std::thread::sleep(POLL_PAUSE);
        }
    }
    // The metrics page reports the exchanges that did it.
    for url in &metrics {
        let page = scrape(url);
        let exchanges = page
            .lines()
            .find_map(|l| l.strip_prefix("tessera_discovery_exchanges_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(
            exchanges.is_some_and(|n| n > 0),
            "no discovery exchanges in:\n{page}"
        );
    }
    let logs = std::fs::read_to_string(&nodes.stderr_files[2]).unwrap_or_default();
    assert!(
        logs.contains("discovered a group member") || {
            let logs1 = std::fs::read_to_string(&nodes.stderr_files[1]).unwrap_or_default();
            logs1.contains("discovered a group member")
        },
        "the bond between nodes 1 and 2 came from discovery\n{}",
        nodes.logs()
    );
}

/// Over one raw client connection: an announced 4 GiB request and an undecodable one get
/// "bad request" answers, then a well-formed status request is served.
fn malformed_requests_are_answered(peer: &str) {
    use tessera::client::{ClientRequest, ClientResponse};
    use tessera::net::{encode_message, local_endpoint, Listen, ALPN_CLIENT};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let addr = tessera::config::parse_peer(peer).expect("peer");
        let secret = tessera::cluster::random_secret().expect("key");
        let listen = Listen {
            bind: "127.0.0.1:0".parse().expect("addr"),
            alpns: Vec::new(),
            relay: None,
        };
        let ep = local_endpoint(secret, &listen).await.expect("endpoint");
        let conn = tokio::time::timeout(DEADLINE, ep.connect(addr, ALPN_CLIENT))
            .await
            .expect("connect in time")
            .expect("connect");
        let ask = |bytes: Vec<u8>| ask_raw(&conn, bytes);
        let raw_frames: [&[u8]; 2] = [&[0xff, 0xff, 0xff, 0xff, 1], &[0, 0, 0, 3, 1, 0xff, 0xff]];
        for raw in raw_frames {
            match ask(raw.to_vec()).await {
                ClientResponse::Error(e) => assert!(e.starts_with("bad request"), "{e}"),
                other => panic!("{raw:?} answered with {other:?}"),
            }
        }
        let mut status = Vec::new();
        encode_message(&mut status, &ClientRequest::Status).expect("encode");
        let answer = ask(status).await;
        match answer {
            ClientResponse::Status(s) => assert_eq!(s.members.len(), 3),
            other => panic!("status answered with {other:?}"),
        }
        ep.close().await;
    });
}

/// One request per stream on `conn`: `bytes` as they are, then the answer.
async fn ask_raw(
    conn: &iroh::endpoint::Connection,
    bytes: Vec<u8>,
) -> tessera::client::ClientResponse {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&bytes).await.expect("write");
    send.finish().expect("finish");
    tokio::time::timeout(
        DEADLINE,
        tessera::net::read_message::<_, tessera::client::ClientResponse>(&mut recv, "answer"),
    )
    .await
    .expect("answer in time")
    .expect("answer")
}

/// Sends `Append` as command 1 of session 7 twice to one node and once more to another,
/// from one client key: the value grows once. The same session number from another key
/// is another session: it grows again.
fn retried_writes_apply_once(peers: &[String]) {
    use tessera::client::{ClientRequest, ClientResponse};
    use tessera::machine::{KvCommand, KvOutput, KvQuery, KvQueryResult};
    use tessera::net::{encode_message, local_endpoint, Listen, ALPN_CLIENT};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listen = Listen {
            bind: "127.0.0.1:0".parse().expect("addr"),
            alpns: Vec::new(),
            relay: None,
        };
        let ask = |ep: iroh::Endpoint, peer: String, request: ClientRequest| async move {
            let addr = tessera::config::parse_peer(&peer).expect("peer");
            let conn = tokio::time::timeout(DEADLINE, ep.connect(addr, ALPN_CLIENT))
                .await
                .expect("connect in time")
                .expect("connect");
            let mut bytes = Vec::new();
            encode_message(&mut bytes, &request).expect("encode");
            ask_raw(&conn, bytes).await
        };
        let append = ClientRequest::Execute {
            session: 7,
            seq: 1,
            command: KvCommand::Append {
                key: b"once".to_vec(),
                value: b"x".to_vec(),
            },
        };
        let secret = tessera::cluster::random_secret().expect("key");
        let ep = local_endpoint(secret, &listen).await.expect("endpoint");
        for peer in [&peers[0], &peers[0], &peers[1]] {
            match ask(ep.clone(), peer.clone(), append.clone()).await {
                ClientResponse::Executed(KvOutput::Append { len_bytes }) => {
                    assert_eq!(len_bytes, 1, "every answer is the first one")
                }
                other => panic!("append answered with {other:?}"),
            }
        }
        let other = local_endpoint(tessera::cluster::random_secret().expect("key"), &listen)
            .await
            .expect("endpoint");
        match ask(other.clone(), peers[0].clone(), append.clone()).await {
            ClientResponse::Executed(KvOutput::Append { len_bytes }) => {
                assert_eq!(len_bytes, 2, "another key's session 7 is another session")
            }
            answer => panic!("append answered with {answer:?}"),
        }
        let get = ClientRequest::Query {
            query: KvQuery::Get {
                key: b"once".to_vec(),
            },
            strong: true,
        };
        match ask(ep.clone(), peers[0].clone(), get).await {
            ClientResponse::Queried(KvQueryResult::Get { value }) => {
                assert_eq!(value.as_deref(), Some(&b"xx"[..]))
            }
            other => panic!("get answered with {other:?}"),
        }
        ep.close().await;
        other.close().await;
    });
}

/// A config beside a private group key and the mock policy; `edit` changes its text.
fn refused_config(d: &Path, edit: impl Fn(String) -> String) -> Output {
    let key = d.join("group.key");
    if !key.exists() {
        let out = tessera(&["keygen", "--group", "--out", key.to_str().expect("path")]);
        assert!(out.status.success());
        std::fs::write(d.join("mock.toml"), tessera::cluster::MOCK_POLICY).expect("policy");
    }
    let peer = format!(
        "{}@127.0.0.1:9",
        iroh::SecretKey::from_bytes(&[7; 32]).public()
    );
    let config = r#"data_dir = "data"
listen = "127.0.0.1:0"
bootstrap = []
group_key_file = "group.key"
policies = ["mock.toml"]
attestation = "mock"
network_id = "bad-configs"
storage = "memory"
"#
    .to_string();
    let config = edit(config).replace("PEER", &peer);
    let path = d.join("node.toml");
    std::fs::write(&path, config).expect("config");
    tessera(&["node", "--config", path.to_str().expect("path")])
}

#[test]
fn bad_configs_exit_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    type Edit = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "unknown field",
            Box::new(|c| format!("{c}colour = \"blue\"\n")),
            vec!["node.toml: ", "unknown field `colour`"],
        ),
        (
            "bad bootstrap entry",
            Box::new(|c| c.replace("bootstrap = []", "bootstrap = [\"PEER\", \"x\"]")),
            vec!["node.toml: bootstrap[1]: expected <node id>@<ip:port> or <ip:port>, got \"x\""],
        ),
        (
            "bad listen address",
            Box::new(|c| c.replace("127.0.0.1:0", "localhost:7000")),
            vec!["node.toml: listen: expected <ip:port>, got \"localhost:7000\""],
        ),
        (
            "unknown storage",
            Box::new(|c| c.replace("\"memory\"", "\"disk\"")),
            vec!["node.toml: storage: expected \"memory\" or \"rocksdb\""],
        ),
        (
            "key file with memory storage",
            Box::new(|c| format!("{c}secret_key_file = \"node.key\"\n")),
            vec!["node.toml: secret_key_file: refused with storage = \"memory\""],
        ),
        (
            "key file with tdx attestation",
            Box::new(|c| {
                c.replace(
                    "attestation = \"mock\"",
                    "attestation = \"tdx\"\ncollateral_file = \"c.json\"\nsecret_key_file = \"node.key\"",
                )
            }),
            vec!["node.toml: secret_key_file: refused with attestation = \"tdx\""],
        ),
        (
            "group key file with tdx attestation",
            Box::new(|c| {
                c.replace(
                    "attestation = \"mock\"",
                    "attestation = \"tdx\"\ncollateral_file = \"c.json\"",
                )
            }),
            vec![
                "node.toml: group_key_file: refused with attestation = \"tdx\"",
                "[provision]",
            ],
        ),
        (
            "missing policy",
            Box::new(|c| c.replace("mock.toml", "nowhere.toml")),
            vec!["node.toml: policies[0]: ", "nowhere.toml"],
        ),
    ];
    for (what, edit, wants) in cases {
        let out = refused_config(d, edit);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        for want in wants {
            assert!(stderr.contains(want), "{what}: want {want:?} in {stderr:?}");
        }
        assert!(
            !text(&out.stdout).contains("ready"),
            "{what}: the node started"
        );
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = d.join("group.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = refused_config(d, |c| c);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("node.toml: group_key_file: ") && stderr.contains("chmod 600"),
            "{stderr}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // The same config with a private key is fine up to the point of running: prove the
        // refusal above was the key's mode by checking a valid config starts (and stop it).
        let path = d.join("node.toml");
        let stderr_file = d.join("ok.stderr");
        let (child, rx) = spawn_node(&path, &stderr_file);
        let nodes = Nodes {
            children: vec![child],
            stdout: vec![rx],
            stderr_files: vec![stderr_file],
        };
        let ready = nodes.wait_line(0, "tessera node: ready", Instant::now() + DEADLINE);
        assert!(ready.contains("node_id="), "{ready}");
    }
}

/// A node without a key file has a new identity at every start (as in a TD). Restarted on
/// the RocksDB directory of its previous identity, it sets those records aside (renamed,
/// never read as its own) and starts as a new member: here, a group of one of its own
/// that does not hold the previous identity's writes.
#[cfg(feature = "rocksdb")]
#[test]
fn a_new_identity_sets_the_previous_identitys_records_aside() {
    let dir = group_dir();
    let d = dir.path();
    let listen = free_ports(1)[0].local_addr().expect("addr").to_string();
    let config = d.join("ephemeral.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "data"
listen = "{listen}"
bootstrap_expect = 1
bootstrap = []
group_key_file = "group.key"
policies = ["mock.toml"]
attestation = "mock"
network_id = "node-process-test"
storage = "rocksdb"
log_level = "info"

[timers]
tick_ms = 20
election_ticks = 10
heartbeat_ticks = 2

[client]
allow = "any"
"#
        ),
    )
    .expect("config");
    let mut ids = Vec::new();
    for round in 0..2 {
        let mut nodes = Nodes::new();
        let ready = nodes.start(d, &config, Instant::now() + DEADLINE);
        let id = ready_field(&ready, "node_id");
        let peer = format!("{id}@{listen}");
        if round == 0 {
            let put = client(&["kv", "put", "old", "records", "--node", &peer]);
            assert!(put.status.success(), "{}", text(&put.stderr));
        } else {
            let get = client(&["kv", "get", "old", "--node", &peer]);
            assert_eq!(
                get.status.code(),
                Some(1),
                "the new identity read the old one's data: {}",
                text(&get.stdout)
            );
            let logs = nodes.logs();
            assert!(logs.contains("set aside"), "{logs}");
        }
        ids.push(id);
        drop(nodes); // kills the process
    }
    assert_ne!(ids[0], ids[1], "a new identity at every start");
    let retired = d.join("data").join(format!("retired-{}", &ids[0][..16]));
    assert!(
        retired
            .join(tessera::storage::identity::OWNER_FILE)
            .exists(),
        "the previous identity's records are kept aside in {}",
        retired.display()
    );
}

/// What a TD does: no key file, so a new identity at every start, and peers named by
/// address alone. Three such nodes find each other and found one group; two are stopped
/// one right after the other (each leaves) and restarted as new identities on their
/// addresses; then one is killed (it cannot leave) and restarted. Each time the others
/// find the new id behind the address, and writes through any address resume, the
/// earlier ones still readable.
#[test]
fn nodes_named_by_address_alone_survive_restarts_as_new_identities() {
    let dir = group_dir();
    let d = dir.path();
    let sockets = free_ports(3);
    let addrs: Vec<String> = sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").to_string())
        .collect();
    drop(sockets);
    // Every node lists all three addresses (its own included): the founders are the three.
    let configs: Vec<PathBuf> = (0..3)
        .map(|i| {
            let config = node_config(d, i, &addrs[i], &addrs, Identity::Fresh, "\"any\"");
            let text = std::fs::read_to_string(&config).expect("config");
            // node_config makes the first node of a list-less start a group of one: not here.
            assert!(!text.contains("bootstrap_expect"), "{text}");
            config
        })
        .collect();
    let mut nodes = Nodes::new();
    let deadline = Instant::now() + DEADLINE;
    for config in &configs {
        nodes.spawn(d, config);
    }
    let mut ids: Vec<String> = (0..3)
        .map(|i| {
            ready_field(
                &nodes.wait_line(i, "tessera node: ready", deadline),
                "node_id",
            )
        })
        .collect();

    // Clients name the nodes by address too.
    let all: Vec<&str> = addrs.iter().flat_map(|a| ["--node", a.as_str()]).collect();
    let settled = |nodes: &Nodes, ids: &[String], what: &str| {
        let mut args = vec!["status"];
        args.extend(&all);
        loop {
            let out = client(&args);
            let rows = status_rows(&text(&out.stdout));
            let leaders = rows.iter().filter(|r| r[1] == "leader").count();
            let current = ids
                .iter()
                .all(|id| rows.iter().any(|r| id.starts_with(&r[0])));
            // Voters all (a learner is shown as such, a node not yet added as "follower
            // (not a member)"): caught up and promoted.
            let voters = rows.iter().all(|r| {
                r[1] == "leader"
                    || (r[1] == "follower" && r.get(2).map(String::as_str) != Some("(not"))
            });
            if out.status.success() && rows.len() == 3 && leaders == 1 && voters && current {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no group of the three current nodes with one leader in time:\n{}{}\n{}",
                text(&out.stdout),
                text(&out.stderr),
                nodes.logs()
            );
            std::thread::sleep(POLL_PAUSE);
        }
    };
    settled(&nodes, &ids, "formation by address");
    let put = client(&["kv", "put", "before", "restarts", "--node", &addrs[0]]);
    assert!(
        put.status.success(),
        "{}{}",
        text(&put.stderr),
        nodes.logs()
    );

    // Nodes 1 and 2 are stopped one right after the other (each leaves the group first),
    // then both come back on their addresses as new identities.
    for i in [1, 2] {
        nodes.stop(i, "TERM", deadline);
    }
    for i in [1, 2] {
        let restarted = nodes.start(d, &configs[i], deadline);
        let id = ready_field(&restarted, "node_id");
        assert_ne!(id, ids[i], "a new identity at every start");
        ids[i] = id;
    }
    settled(&nodes, &ids, "after two restarts as new identities");
    // Then one is killed (it cannot leave) and comes back: the group replaces the dead
    // voter with the new identity behind its address.
    let victim = nodes.children.len() - 1;
    nodes.stop(victim, "KILL", deadline);
    let restarted = nodes.start(d, &configs[2], deadline);
    ids[2] = ready_field(&restarted, "node_id");
    settled(
        &nodes,
        &ids,
        "after a crash and a restart as a new identity",
    );
    for (i, addr) in addrs.iter().enumerate() {
        let key = format!("after-{i}");
        let put = client(&["kv", "put", &key, "restarts", "--node", addr]);
        assert!(
            put.status.success(),
            "put through {addr}: {}{}",
            text(&put.stderr),
            nodes.logs()
        );
    }
    let get = client(&["kv", "get", "before", "--node", &addrs[2]]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(text(&get.stdout).trim_end(), "restarts");
    // Members whose ids nobody configured are named by the key they bonded with, also by
    // a node that did not restart (it resolved the old ids at its start).
    let listed = client(&["member", "list", "--node", &addrs[0]]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    for row in text(&listed.stdout).lines().skip(1) {
        let name = row.split_whitespace().next().unwrap_or("");
        assert!(
            ids.iter().any(|id| id.starts_with(name)),
            "a member not named by its key: {row}\n{}",
            text(&listed.stdout)
        );
    }
}

/// A node started with `[provision]` instead of a key file (as in a TD) serves nothing but
/// its attestation until an allowed provisioner sends the key, and `tessera provision`
/// sends it only to a node whose quote passes its policy: a policy for another image, a
/// key outside the allow list and `--insecure` all leave the node waiting, keyless. Once
/// provisioned the node forms its group and serves writes; the same key sent again is
/// acknowledged, another refused.
#[test]
fn a_node_waits_for_its_group_key_and_gets_it_only_after_its_quote_passes() {
    let dir = group_dir();
    let d = dir.path();
    let deadline = Instant::now() + DEADLINE;
    let (provisioner, provisioner_id) = keygen(d, "provisioner.key");
    let (outsider, _) = keygen(d, "outsider.key");
    let port = free_ports(1).remove(0).local_addr().expect("port").port();
    let listen = format!("127.0.0.1:{port}");
    let config = node_config(d, 0, &listen, &[], Identity::Fresh, "\"any\"");
    let text_of = std::fs::read_to_string(&config).expect("config");
    let provisioned = text_of.replace("group_key_file = \"group.key\"\n", "")
        + &format!("\n[provision]\nallow = [\"{provisioner_id}\"]\n");
    std::fs::write(&config, provisioned).expect("config");
    let mut nodes = Nodes::new();
    let i = nodes.spawn(d, &config);
    let waiting = nodes.wait_line(i, "tessera node: waiting for the group key", deadline);
    let node = format!("{}@{listen}", ready_field(&waiting, "node_id"));

    let put = |value: &str| client(&["kv", "--node", &node, "put", "k", value]);
    let out = put("early");
    assert!(!out.status.success(), "a keyless node took a write");
    assert!(
        text(&out.stderr).contains("waiting for its group key"),
        "{}",
        text(&out.stderr)
    );

    let other_image = d.join("other-image.toml");
    let mr_td = "6cb1c262a0f23144e19cfc8e2525aab9e31c16182aa342ad43d60ce499b49cedd4a7a761bbc286fd793f91a837b0027a";
    std::fs::write(
        &other_image,
        tessera::cluster::MOCK_POLICY.replace(mr_td, &"cd".repeat(48)),
    )
    .expect("policy");
    let group_key = d.join("group.key");
    // `tessera provision` of `group_key` to the node, as `key`, checking it with `trust`.
    let provision = |group_key: &Path, key: &Path, trust: &[&str]| {
        let mut args = vec![
            "provision",
            "--node",
            &node,
            "--group-key-file",
            group_key.to_str().expect("path"),
            "--key-file",
            key.to_str().expect("path"),
        ];
        args.extend(trust);
        tessera(&args)
    };
    let mock_policy = ["--policy", MOCK_POLICY_FILE];
    for (what, out, expected) in [
        (
            "a policy for another image",
            provision(
                &group_key,
                &provisioner,
                &["--policy", other_image.to_str().expect("path")],
            ),
            "did not prove it runs an image the client's policy approves",
        ),
        (
            "a key outside [provision] allow",
            provision(&group_key, &outsider, &mock_policy),
            "[provision] allow",
        ),
        (
            "--insecure",
            provision(&group_key, &provisioner, &["--insecure"]),
            "--insecure refused",
        ),
    ] {
        assert_exit_2_saying(&out, what, expected);
        let out = put("still-early");
        assert!(
            text(&out.stderr).contains("waiting for its group key"),
            "after {what} the node must still be keyless: {}",
            text(&out.stderr)
        );
    }

    let out = provision(&group_key, &provisioner, &mock_policy);
    assert!(
        out.status.success(),
        "provision: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("provisioned"),
        "{}",
        text(&out.stdout)
    );
    nodes.wait_line(i, "tessera node: ready", deadline);
    loop {
        let out = put("v1");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write after provisioning: {}\n{}",
            text(&out.stderr),
            nodes.logs()
        );
        std::thread::sleep(POLL_PAUSE);
    }
    let out = client(&["kv", "--node", &node, "get", "k"]);
    assert_eq!(text(&out.stdout).trim(), "v1", "{}", text(&out.stderr));

    let again = provision(&group_key, &provisioner, &mock_policy);
    assert!(
        again.status.success(),
        "the same key again: {}",
        text(&again.stderr)
    );
    let other_key = d.join("other-group.key");
    let made = tessera(&[
        "keygen",
        "--group",
        "--out",
        other_key.to_str().expect("path"),
    ]);
    assert!(made.status.success());
    let out = provision(&other_key, &provisioner, &mock_policy);
    assert_exit_2_saying(&out, "another key", "another group key");
}

/// A node with `pccs_url` takes its collateral from a PCCS on loopback (started here) at
/// start, says so in /metrics and caches it in its data directory; restarted while the
/// PCCS answers 500, it starts from the cache (verified again) and counts the failed
/// refresh; with neither, it refuses to start, naming pccs_url.
#[test]
fn a_node_fetches_its_collateral_from_a_pccs_and_restarts_from_its_cache() {
    use pccs_server::{Behaviour, PccsServer};
    use tessera_attestation::provider::mock::{MockConfig, MockProvider};

    let dir = group_dir();
    let d = dir.path();
    let mock = MockConfig::default();
    // Evaluation data number 18: not the mock provider's own bundle (17), so the metrics
    // below can only show it if it came from the PCCS.
    let bundle = MockProvider::new(mock.clone().with_eval(18, mock.collateral_issued_at))
        .expect("mock")
        .collateral()
        .expect("collateral");
    let server = PccsServer::start_in_background(Behaviour::Serve(Box::new(bundle)));
    let listen = free_ports(1)[0].local_addr().expect("addr").to_string();
    let config = d.join("pccs.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "data"
listen = "{listen}"
bootstrap_expect = 1
bootstrap = []
group_key_file = "group.key"
policies = ["mock.toml"]
attestation = "mock"
pccs_url = "{url}"
collateral_fetch_timeout_secs = 5
network_id = "node-process-test"
storage = "memory"
log_level = "info"
metrics = "127.0.0.1:0"

[client]
allow = "any"
"#,
            url = server.url
        ),
    )
    .expect("config");

    let deadline = Instant::now() + DEADLINE;
    let mut nodes = Nodes::new();
    let ready = nodes.start(d, &config, deadline);
    let page = scrape(&metrics_addr(&ready));
    assert!(
        page.contains("tessera_collateral_fetches_total 1"),
        "{page}\n{}",
        nodes.logs()
    );
    assert!(
        page.contains("tessera_collateral_age_seconds{source=\"pccs\"}"),
        "{page}"
    );
    assert!(
        nodes.logs().contains("collateral installed"),
        "{}",
        nodes.logs()
    );
    let cache = d
        .join("data")
        .join(tessera::collateral::cache::CACHE_FILE_NAME);
    let cached = tessera::collateral::cache::read(&cache)
        .expect("read the cache")
        .expect("the fetched bundle is cached");
    assert!(cached
        .as_dcap()
        .tcb_info
        .contains("\"tcbEvaluationDataNumber\":18"));
    drop(nodes);

    server.set(Behaviour::Status(500));
    let mut nodes = Nodes::new();
    let ready = nodes.start(d, &config, deadline);
    let addr = metrics_addr(&ready);
    // The refresh the cache stood in for runs at once, and fails: wait for it to be counted.
    loop {
        let page = scrape(&addr);
        if page.contains("tessera_collateral_fetch_failures_total{reason=\"http_status\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed fetch counted\n{page}\n{}",
            nodes.logs()
        );
        std::thread::sleep(POLL_PAUSE);
    }
    assert!(nodes.logs().contains("cache"), "{}", nodes.logs());
    drop(nodes);

    std::fs::remove_file(&cache).expect("remove the cache");
    let out = tessera(&["node", "--config", config.to_str().expect("path")]);
    assert_exit_2_saying(
        &out,
        "no cache and the PCCS down",
        "pccs_url: no collateral to start with",
    );
}
