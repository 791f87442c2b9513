//! Thread budgets (`Backend::with_threads`, ABI 4) reach the backend, in process and through the
//! plugin boundary: the test-fixture plugin answers `THREADS_PROBE` with the budget its call ran
//! under. (How each real backend applies a budget is tested in its own crate.)
use adp_api::Device;
use adp_plugin_test_fixture::{dummy_specs, FixtureBackend, THREADS_PROBE};

#[test]
fn the_budget_reaches_every_call_made_inside_with_threads_and_only_those() {
    for b in [
        adp_conformance::in_process(FixtureBackend),
        adp_conformance::plugin("adp_plugin_test_fixture"),
    ] {
        let encoder = b.text_image_encoder(&dummy_specs().0, Device::Cpu).unwrap();
        let probe = || encoder.token_embedding(THREADS_PROBE).unwrap()[0];
        let (mut inside, mut nested) = (0.0, 0.0);
        b.with_threads(3, &mut || {
            inside = probe();
            b.with_threads(1, &mut || nested = probe());
            assert_eq!(probe(), 3.0, "{}: the outer budget is back", b.info().name);
        });
        assert_eq!((inside, nested), (3.0, 1.0), "{}", b.info().name);
        assert_eq!(probe(), 0.0, "{}: no budget outside with_threads", b.info().name);
        // Another thread's calls do not see this thread's budget.
        b.with_threads(2, &mut || {
            let other = std::thread::scope(|s| s.spawn(probe).join().unwrap());
            assert_eq!(other, 0.0, "{}", b.info().name);
        });
    }
}
