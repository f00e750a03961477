//! The load run of scripts/bench-serve.sh: N software machines against `imgctl serve`
//! replicas, optionally SIGKILLing one replica in the middle; prints the figures and the
//! audit as one JSON object, exits 1 if any invariant failed.
//!
//! ```text
//! serve_load --server URL [--server URL ...] --machines N --rounds R --event-log FILE
//!            --pcrs 0,1,2,3,4,5,6,7,9,11 --secret NAME=FILE
//!            [--kill-pid PID --kill-after ATTESTATIONS] [--check URL]
//! ```

use std::process::ExitCode;

use imgctl_measure::bank::HashAlg;
use imgctl_service::load::{check, run, LoadConfig, MidRun};

fn main() -> ExitCode {
    match main2() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("serve_load: {e}");
            ExitCode::from(2)
        }
    }
}

fn main2() -> Result<ExitCode, String> {
    let mut args = std::env::args().skip(1);
    let mut servers = Vec::new();
    let (mut machines, mut rounds) = (200usize, 5usize);
    let mut event_log = None;
    let mut pcrs = Vec::new();
    let mut secrets = Vec::new();
    let (mut kill_pid, mut kill_after) = (None, 0usize);
    let mut check_url = None;
    let num = |v: Option<String>, what: &str| -> Result<usize, String> {
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{what}: a number"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--server" => servers.push(args.next().ok_or("--server: a URL")?),
            "--machines" => machines = num(args.next(), "--machines")?,
            "--rounds" => rounds = num(args.next(), "--rounds")?,
            "--event-log" => {
                let f = args.next().ok_or("--event-log: a file")?;
                event_log = Some(std::fs::read(&f).map_err(|e| format!("{f}: {e}"))?);
            }
            "--pcrs" => {
                pcrs = args
                    .next()
                    .ok_or("--pcrs: a list")?
                    .split(',')
                    .map(|p| p.parse::<u32>().map_err(|_| format!("--pcrs: {p}")))
                    .collect::<Result<_, _>>()?
            }
            "--secret" => {
                let v = args.next().ok_or("--secret: NAME=FILE")?;
                let (n, f) = v.split_once('=').ok_or("--secret: NAME=FILE")?;
                secrets.push((
                    n.to_owned(),
                    std::fs::read(f).map_err(|e| format!("{f}: {e}"))?,
                ));
            }
            "--kill-pid" => kill_pid = Some(num(args.next(), "--kill-pid")?),
            "--kill-after" => kill_after = num(args.next(), "--kill-after")?,
            "--check" => check_url = Some(args.next().ok_or("--check: a URL")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let cfg = LoadConfig {
        servers: servers.clone(),
        machines,
        rounds,
        event_log: event_log.ok_or("--event-log is required")?,
        selection: vec![(HashAlg::SHA256, pcrs)],
        secrets: secrets.clone(),
    };
    let killed_at = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mid: MidRun = kill_pid.map(|pid| {
        let k = killed_at.clone();
        let f: Box<dyn FnOnce() + Send> = Box::new(move || {
            let ok = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if let Ok(mut g) = k.lock() {
                *g = Some((std::time::SystemTime::now(), ok));
            }
        });
        (kill_after, f)
    });
    let (report, logs) = run(cfg, mid)?;
    let url = check_url.unwrap_or_else(|| servers.last().cloned().unwrap_or_default());
    let audit = check(&url, &logs, rounds, secrets.len());
    let killed = killed_at.lock().ok().and_then(|g| *g).map(|(_, ok)| ok);
    let out = serde_json::json!({
        "report": report,
        "killed": killed,
        "audit": audit.as_ref().ok(),
        "violations": audit.as_ref().err(),
    });
    println!("{out}");
    Ok(
        if audit.is_ok() && kill_pid.is_none_or(|_| killed == Some(true)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
