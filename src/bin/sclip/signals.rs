//! Ctrl-C, SIGTERM (Slurm, Kubernetes, `timeout`) and SIGHUP: stop feeding the model between
//! images, let the run report what it did, and exit with 128 + the signal's number.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use sclip::atomic_write::remove_temporaries_in_flight;

use crate::EXIT_SIGNALLED;

/// Once `streaming` is set, the first SIGINT (Ctrl-C), SIGTERM or SIGHUP stops feeding the model
/// and lets the images being written finish; a second one removes the files being written and
/// quits at once, as the first does before. `signal` records the first one's number.
#[cfg(unix)]
pub fn stop_on_signals(
    stop: &Arc<AtomicBool>,
    signal: &Arc<AtomicI32>,
    streaming: &Arc<AtomicBool>,
) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("sclip: warning: Ctrl-C and SIGTERM will stop at once: {err}");
            return;
        }
    };
    let (stop, signal, streaming) = (Arc::clone(stop), Arc::clone(signal), Arc::clone(streaming));
    std::thread::spawn(move || {
        for number in signals.forever() {
            let name = signal_hook::low_level::signal_name(number).unwrap_or("a signal");
            if !streaming.load(Ordering::SeqCst) {
                remove_temporaries_in_flight();
                eprintln!("sclip: interrupted by {name} before any image started");
                std::process::exit(EXIT_SIGNALLED + number);
            }
            if signal.swap(number, Ordering::SeqCst) != 0 {
                remove_temporaries_in_flight();
                std::process::exit(EXIT_SIGNALLED + number);
            }
            stop.store(true, Ordering::SeqCst);
            eprintln!(
                "sclip: interrupted by {name}; finishing the images being written (a second \
                 Ctrl-C or {name} quits at once)"
            );
        }
    });
}

/// Ctrl-C, as [`stop_on_signals`] does on Unix.
#[cfg(not(unix))]
pub fn stop_on_signals(
    stop: &Arc<AtomicBool>,
    signal: &Arc<AtomicI32>,
    streaming: &Arc<AtomicBool>,
) {
    const SIGINT: i32 = 2;
    let (stop, signal, streaming) = (Arc::clone(stop), Arc::clone(signal), Arc::clone(streaming));
    let handler = ctrlc::set_handler(move || {
        if !streaming.load(Ordering::SeqCst) || signal.swap(SIGINT, Ordering::SeqCst) != 0 {
            remove_temporaries_in_flight();
            std::process::exit(EXIT_SIGNALLED + SIGINT);
        }
        stop.store(true, Ordering::SeqCst);
        eprintln!(
            "sclip: interrupted; finishing the images being written (Ctrl-C again quits at once)"
        );
    });
    if let Err(err) = handler {
        eprintln!("sclip: warning: Ctrl-C will stop at once: {err}");
    }
}
