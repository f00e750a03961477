//! A software TPM per test: `swtpm socket` on free loopback ports (or a unix socket), killed
//! and its state removed when the guard drops, also when the test panics.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SWTPM: &str = "/usr/bin/swtpm";

#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    state: tempfile::TempDir,
    /// TCP data port (control port is `port + 1`), when started on TCP.
    pub port: Option<u16>,
    /// Unix data socket, when started on a unix socket.
    pub socket: Option<PathBuf>,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two consecutive free ports P, P+1 on 127.0.0.1 (checked by binding; a race with another
/// process is retried by the caller through `start_tcp`'s readiness check).
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let p = a.local_addr().expect("local address").port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

fn wait_for(ready: impl Fn() -> bool, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("swtpm exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("swtpm did not come up within 10 s");
}

impl Swtpm {
    /// `swtpm socket --tpm2 --server type=tcp,port=P --ctrl type=tcp,port=P+1 --tpmstate dir=D
    /// --flags not-need-init,startup-clear`.
    pub fn start_tcp() -> Swtpm {
        Swtpm::start_tcp_with(|_| {})
    }

    /// [`Swtpm::start_tcp`] on a state folder `prepare` fills first (e.g. `swtpm_setup`
    /// manufacturing the TPM with EK certificates).
    pub fn start_tcp_with(prepare: impl Fn(&Path)) -> Swtpm {
        for _ in 0..5 {
            let state = tempfile::tempdir().expect("temp dir");
            prepare(state.path());
            let port = free_port_pair();
            let mut child = Command::new(SWTPM)
                .args(["socket", "--tpm2"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.path().display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting swtpm");
            let start = Instant::now();
            let mut up = false;
            while start.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_ok() {
                    up = true;
                    break;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile: try another pair
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if up {
                return Swtpm {
                    child,
                    state,
                    port: Some(port),
                    socket: None,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start swtpm on a free port pair");
    }

    /// swtpm on a unix socket `SOCK` with control socket `SOCK.ctrl` (what systemd's
    /// `--tpm2-device=swtpm:path=SOCK` talks to).
    pub fn start_unix() -> Swtpm {
        let state = tempfile::tempdir().expect("temp dir");
        let sock = state.path().join("sock");
        let mut child = Command::new(SWTPM)
            .args(["socket", "--tpm2"])
            .arg("--server")
            .arg(format!("type=unixio,path={}", sock.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}.ctrl", sock.display()))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting swtpm");
        let s = sock.clone();
        wait_for(|| s.exists(), &mut child);
        Swtpm {
            child,
            state,
            port: None,
            socket: Some(sock),
        }
    }

    /// The TCTI string imgctl and tpm2-tools take.
    pub fn tcti(&self) -> String {
        match (&self.port, &self.socket) {
            (Some(p), _) => format!("swtpm:host=127.0.0.1,port={p}"),
            (_, Some(s)) => format!("swtpm:path={}", s.display()),
            _ => unreachable!(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}
