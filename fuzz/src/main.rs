//! `adp-fuzz --seed S --cases N [--target NAME[=N]]... [--case K] [--hang-secs T]`: N cases of
//! each target (all by default; `NAME=N` sets one target's count, since their speeds differ by
//! 100×); exits 1 on any panic or hang (a heap past the bound aborts).
use adp_fuzz::targets::NAMES;
use std::time::Duration;

const USAGE: &str = "usage: adp-fuzz --seed S --cases N [--target NAME[=N]]... [--case K] [--hang-secs T]";

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut seed, mut cases, mut only, mut hang) = (0u64, 1000u64, None, 10u64);
    let mut targets: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| fail(&format!("{a} needs a value")));
        let num = |v: String| {
            v.parse::<u64>()
                .unwrap_or_else(|_| fail(&format!("{a}: not a number: {v}")))
        };
        match a.as_str() {
            "--seed" => seed = num(value()),
            "--cases" => cases = num(value()),
            "--case" => only = Some(num(value())),
            "--hang-secs" => hang = num(value()),
            "--target" => targets.push(value()),
            "-h" | "--help" => {
                println!("{USAGE}\ntargets: {}", NAMES.join(", "));
                return;
            }
            _ => fail(&format!("unknown argument {a}")),
        }
    }
    if targets.is_empty() {
        targets = NAMES.iter().map(|s| s.to_string()).collect();
    }
    let targets: Vec<(String, u64)> = targets
        .iter()
        .map(|t| match t.split_once('=') {
            Some((n, c)) => (
                n.to_string(),
                c.parse().unwrap_or_else(|_| fail(&format!("{t}: not a count"))),
            ),
            None => (t.clone(), cases),
        })
        .collect();
    if let Some((t, _)) = targets.iter().find(|(t, _)| !NAMES.contains(&t.as_str())) {
        fail(&format!("no target {t:?} (targets: {})", NAMES.join(", ")));
    }
    let start = std::time::Instant::now();
    let mut all = Vec::new();
    for (t, cases) in &targets {
        let s = adp_fuzz::run(t, seed, *cases, only, Duration::from_secs(hang));
        eprintln!("{t}: {} cases in {:.1} s", s.cases, s.secs);
        let stop = s.hangs > 0;
        all.push(s);
        if stop {
            break; // The hung case still holds its thread: nothing after it would be measured fairly.
        }
    }
    print!("{}", adp_fuzz::table(&all));
    let total: u64 = all.iter().map(|s| s.cases).sum();
    println!(
        "total {total} cases, seed {seed}, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let failures: Vec<_> = all.iter().filter_map(|s| s.first_failure.as_deref()).collect();
    if !failures.is_empty() {
        for f in failures {
            println!("FAIL {f}");
        }
        std::process::exit(1);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("adp-fuzz: {msg}\n{USAGE}");
    std::process::exit(2)
}
