//! Benchmark helper for scripts/bench-eventlog.sh: `bench_eventlog FILE REPS` prints the mean
//! nanoseconds of one parse + replay; `bench_eventlog --batch N FILES…` prints logs/s for N
//! parse + replay runs cycled over the files (read once, timed in memory).

use std::time::Instant;

use imgctl_attest::eventlog::{replay, EventLog};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--batch") {
        let n: usize = args.get(1).ok_or("N")?.parse()?;
        let all: Vec<Vec<u8>> = args[2..]
            .iter()
            .map(std::fs::read)
            .collect::<Result<_, _>>()?;
        // Logs we reject (specid-vendordata.bin, the bogus/empty ones) are not in the batch.
        let logs: Vec<Vec<u8>> = all
            .into_iter()
            .filter(|d| EventLog::parse(d).is_ok())
            .collect();
        let t = Instant::now();
        let mut pcrs = 0;
        for i in 0..n {
            let log = EventLog::parse(&logs[i % logs.len()])?;
            pcrs += replay(&log).values.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "imgctl: {n} logs in {s:.3}s = {:.0} logs/s ({pcrs} bank replays)",
            n as f64 / s
        );
        return Ok(());
    }
    let data = std::fs::read(args.first().ok_or("FILE")?)?;
    let reps: u32 = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    if EventLog::parse(&data).is_err() {
        println!("0 rejected");
        return Ok(());
    }
    let t = Instant::now();
    for _ in 0..reps {
        let log = EventLog::parse(&data)?;
        std::hint::black_box(replay(&log));
    }
    println!("{}", t.elapsed().as_nanos() / u128::from(reps));
    Ok(())
}
