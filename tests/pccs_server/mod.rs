//! A PCCS on loopback for tests: the four PCCS v4 paths tessera's collateral client asks
//! for, with the headers a real PCCS sends (URL-encoded issuer chains), answering from a
//! collateral bundle the test chooses, or failing as the test chooses. Started by the test
//! itself on 127.0.0.1; nothing else is contacted.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tessera_attestation::Collateral;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the server answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// The items of this bundle, as a PCCS serves them.
    Serve(Box<Collateral>),
    /// This status, empty body, for every path.
    Status(u16),
    /// Accept the connection, read the request, never answer.
    Silent,
    /// A 200 answer whose body is this many bytes.
    Huge(usize),
}

/// A running loopback PCCS; stops with the runtime that started it.
#[derive(Clone)]
pub struct PccsServer {
    pub url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicU64>,
}

impl PccsServer {
    /// Starts serving on a fresh loopback port, on the current tokio runtime.
    pub async fn start(behaviour: Behaviour) -> PccsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = PccsServer {
            url,
            behaviour: Arc::new(Mutex::new(behaviour)),
            requests: Arc::new(AtomicU64::new(0)),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move { s.answer(stream).await });
            }
        });
        server
    }

    /// Starts serving on a runtime of its own, on a thread of its own (for tests that are
    /// not async, like the node process tests). The server lives as long as the process.
    pub fn start_in_background(behaviour: Behaviour) -> PccsServer {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = PccsServer::start(behaviour).await;
                tx.send(server).expect("hand over");
                std::future::pending::<()>().await
            })
        });
        rx.recv().expect("server started")
    }

    /// Changes how the server answers from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("lock") = behaviour;
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    async fn answer(&self, mut stream: TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > 16 * 1024 {
                return;
            }
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        let target = line.split(' ').nth(1).unwrap_or("").to_owned();
        let path = target.split('?').next().unwrap_or("").to_owned();
        let behaviour = self.behaviour.lock().expect("lock").clone();
        let (status, headers, body) = match behaviour {
            Behaviour::Silent => {
                // Hold the connection open and say nothing until the client gives up.
                let _ = stream.read(&mut buf).await;
                return;
            }
            Behaviour::Status(status) => (status, Vec::new(), Vec::new()),
            Behaviour::Huge(len) => (200, Vec::new(), vec![b'0'; len]),
            Behaviour::Serve(c) => serve(&c, &path),
        };
        let reason = if status == 200 { "OK" } else { "Error" };
        let mut response = format!("HTTP/1.1 {status} {reason}\r\n");
        for (name, value) in headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }
}

/// The answer a PCCS gives for `path` from bundle `c`.
fn serve(c: &Collateral, path: &str) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let c = c.as_dcap();
    match path {
        "/sgx/certification/v4/pckcrl" => (
            200,
            vec![("SGX-PCK-CRL-Issuer-Chain", encode(&c.pck_crl_issuer_chain))],
            c.pck_crl.clone(),
        ),
        "/tdx/certification/v4/tcb" => (
            200,
            vec![("TCB-Info-Issuer-Chain", encode(&c.tcb_info_issuer_chain))],
            format!(
                r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                c.tcb_info,
                hex::encode(&c.tcb_info_signature)
            )
            .into_bytes(),
        ),
        "/tdx/certification/v4/qe/identity" => (
            200,
            vec![(
                "SGX-Enclave-Identity-Issuer-Chain",
                encode(&c.qe_identity_issuer_chain),
            )],
            format!(
                r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                c.qe_identity,
                hex::encode(&c.qe_identity_signature)
            )
            .into_bytes(),
        ),
        // A PCCS serves the root CA CRL hex-encoded.
        "/sgx/certification/v4/rootcacrl" => {
            (200, Vec::new(), hex::encode(&c.root_ca_crl).into_bytes())
        }
        _ => (404, Vec::new(), Vec::new()),
    }
}

/// URL-encodes as a PCCS does its issuer chain headers (everything but unreserved).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
