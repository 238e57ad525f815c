//! An OpenAI-compatible HTTP server over the iapt engine.
//!
//! `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (streamed as server-sent
//! events or not), with the request's `model` field choosing the adapter (or the bare base
//! model); adapters are loaded and unloaded at run time with vLLM's endpoints
//! (`POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`, for adapters of every kind);
//! `GET /health`. Errors have OpenAI's shape. The official OpenAI client libraries work against
//! it unchanged.

pub mod client;
mod error;
pub mod load;
mod openai;
mod routes;

pub use error::ApiError;

use iapt_engine::EngineHandle;
use iapt_model::Tokenizer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What the server serves: an engine, the tokenizer of its model, and the model's name.
#[derive(Clone)]
pub struct ServerState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The `model` id of the bare base model (`GET /v1/models` lists it first).
    pub model_id: String,
}

/// A running server: its address, and a way to stop it gracefully.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Bind `addr` (port 0: any free port) and serve on a background thread. With
    /// `handle_signals`, Ctrl-C or SIGTERM also stops it. Stopping refuses new connections and
    /// waits for the in-flight requests to finish.
    pub fn start(state: ServerState, addr: &str, handle_signals: bool) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("iapt-http".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let app = routes::router(state);
                axum::serve(listener, app).with_graceful_shutdown(shutdown_signal(stopped, handle_signals)).await
            })
        })?;
        Ok(Self { addr, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, finish in-flight requests, and return once the server is down.
    pub fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join()
    }

    /// Wait until the server stops (by a signal, with `handle_signals`).
    pub fn wait(mut self) -> std::io::Result<()> {
        self.join()
    }

    fn join(&mut self) -> std::io::Result<()> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the HTTP server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.join();
    }
}

/// Resolves when the server should stop: asked to, or (with `signals`) on Ctrl-C or SIGTERM.
async fn shutdown_signal(stopped: oneshot::Receiver<()>, signals: bool) {
    if !signals {
        let _ = stopped.await;
        return;
    }
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = stopped => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted: finishing in-flight requests"),
        _ = terminate => eprintln!("terminated: finishing in-flight requests"),
    }
}
