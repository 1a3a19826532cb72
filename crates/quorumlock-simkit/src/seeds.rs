//! Seeds: which ones to run, and running one so that a failure names it.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while a seed runs, so that the panic hook stays quiet about a
    /// panic that [`run_seed`] catches and reports with its seed.
    static IN_SEED: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that defers to the default one except
/// inside [`run_seed`].
fn quiet_panics_in_seeds() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_SEED.with(Cell::get) {
                default_hook(info);
            }
        }));
    });
}

/// Runs one seed. A broken property (`Err`) or a panic becomes an error
/// naming the seed, `what` ran, and `replay`, the command that runs it again.
pub fn run_seed<T>(
    what: &str,
    seed: u64,
    replay: &str,
    run: impl FnOnce(u64) -> Result<T, String>,
) -> Result<T, String> {
    quiet_panics_in_seeds();
    IN_SEED.with(|flag| flag.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| run(seed)));
    IN_SEED.with(|flag| flag.set(false));
    match outcome {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(violation)) => Err(format!("{what}, seed {seed}: {violation} (replay: {replay})")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!(
                "{what}, seed {seed}: panicked: {message} (replay: {replay})"
            ))
        }
    }
}

/// A number from the environment, if the variable is set.
///
/// # Panics
/// When the variable is set to something that is not a number: a mistyped
/// replay must not silently run other seeds.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

/// The seeds to run: only `{prefix}_SEED` when it is set; otherwise
/// `count_var` many (default `default_count`) starting at
/// `{prefix}_FIRST_SEED` (default 0).
pub fn seeds_from_env(prefix: &str, count_var: &str, default_count: u64) -> Vec<u64> {
    match env_u64(&format!("{prefix}_SEED")) {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64(&format!("{prefix}_FIRST_SEED")).unwrap_or(0);
            (first..first + env_u64(count_var).unwrap_or(default_count)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_or_panicking_seed_is_reported_with_its_number_and_replay() {
        let failed = run_seed::<()>("sim", 7, "SEED=7", |_| Err("agreement broken".to_string()));
        let failed = failed.unwrap_err();
        assert!(
            failed.contains("seed 7") && failed.contains("agreement broken") && failed.contains("SEED=7")
        );
        let panicked = run_seed::<()>("sim", 8, "SEED=8", |_| panic!("core assertion"));
        assert!(panicked.unwrap_err().contains("panicked: core assertion"));
        assert_eq!(run_seed("sim", 9, "", |seed| Ok(seed * 2)), Ok(18));
    }
}
