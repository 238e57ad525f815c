//! Ctrl-C during training: the first one asks burn-train to stop after the current batch (the
//! newest complete epoch checkpoint stays on disk, and the run resumes from it); a second one
//! exits at once. Without this, SIGINT would kill the process mid-step.

use burn::train::Interrupter;
use signal_hook::consts::SIGINT;
use signal_hook::SigId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the interrupter's message says after Ctrl-C.
pub const CTRL_C_MESSAGE: &str = "interrupted by Ctrl-C";

/// Forwards SIGINT to an [`Interrupter`] while alive.
pub struct CtrlCWatch {
    ids: Vec<SigId>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CtrlCWatch {
    /// Start watching; if the handlers cannot be installed (unusual platform), training simply
    /// runs without them.
    pub fn start(interrupter: Interrupter) -> Self {
        let pressed = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        // Order matters: the conditional shutdown fires only if `pressed` was already set.
        if let Ok(id) = signal_hook::flag::register_conditional_shutdown(SIGINT, 130, pressed.clone()) {
            ids.push(id);
        }
        if let Ok(id) = signal_hook::flag::register(SIGINT, pressed.clone()) {
            ids.push(id);
        }
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if pressed.load(Ordering::Relaxed) && !interrupter.should_stop() {
                        eprintln!("\n{CTRL_C_MESSAGE}: stopping after this batch (Ctrl-C again to exit now)");
                        interrupter.stop(Some(CTRL_C_MESSAGE));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self { ids, done, thread: Some(thread) }
    }
}

impl Drop for CtrlCWatch {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
