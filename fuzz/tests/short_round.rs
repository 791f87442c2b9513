//! The CI round: a fixed seed, a few hundred cases of every target, no panic and no hang.
use adp_fuzz::targets::NAMES;
use std::time::Duration;

#[test]
fn a_short_fixed_seed_round_finds_no_panic_or_hang() {
    let mut all = Vec::new();
    for t in NAMES {
        // Fewer where a case is slow unoptimised: diffusers rewrites several files, and a JPEG
        // with mutated sides decodes and resizes megapixels.
        let cases = match t {
            "diffusers" => 200,
            "jpeg" => 150,
            _ => 500,
        };
        all.push(adp_fuzz::run(t, 17, cases, None, Duration::from_secs(10)));
    }
    eprint!("{}", adp_fuzz::table(&all));
    for s in &all {
        assert_eq!((s.panics, s.hangs), (0, 0), "{}: {:?}", s.target, s.first_failure);
        // Each target reaches the code behind its parser, and refuses most mutants.
        assert!(
            s.ok > 0 && s.errors > 0,
            "{}: {} ok, {} errors",
            s.target,
            s.ok,
            s.errors
        );
        assert!(s.peak_bytes < adp_fuzz::alloc::LIMIT);
    }
}
