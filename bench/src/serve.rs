//! What the two benchmark servers share: flags, runtime, the `/healthz` and `/stats` routes,
//! and serving an axum `Router` on loopback.
//!
//! Everything here is identical for the baseline and for tower-ws-hub, so that the only
//! difference between them is the WebSocket hub itself.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;

use crate::server_stats::ServerStats;

/// Flags both servers take.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (loopback only); port 0 picks a free port, printed on start.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Set TCP_NODELAY on accepted sockets (off by default, as with a plain `axum::serve`;
    /// tower-ws-hub sets it on its own WebSockets anyway, `HubBuilder::tcp_nodelay`).
    #[arg(long)]
    pub nodelay: bool,
    /// Validate the flags and exit without serving.
    #[arg(long)]
    pub check: bool,
}

impl ServerArgs {
    /// Refuses anything but a loopback address: these servers exist to be loaded by a local
    /// load generator.
    ///
    /// # Errors
    ///
    /// A message for a non-loopback address.
    pub fn validate(&self) -> Result<(), String> {
        if self.addr.ip().is_loopback() {
            Ok(())
        } else {
            Err(format!(
                "--addr {}: benchmark servers listen on loopback only (127.0.0.1)",
                self.addr
            ))
        }
    }
}

/// Logs warnings and errors (or what `RUST_LOG` asks for) to stderr.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The multi-threaded runtime both servers run on.
///
/// # Errors
///
/// When the runtime cannot start.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers.max(1));
    }
    builder.enable_all().build()
}

/// `GET /healthz` (`ok`) and `GET /stats` ([`ServerStats`] as JSON, with `connections()` as
/// the number of open WebSocket connections).
pub fn admin_routes(connections: impl Fn() -> u64 + Send + Sync + 'static) -> Router {
    let connections = Arc::new(connections);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/stats",
            get(move || {
                let connections = Arc::clone(&connections);
                async move { axum::Json(ServerStats::current(connections())) }
            }),
        )
}

/// Binds, prints `listening on ADDR` on stdout (the only line the servers print), and serves
/// `app` until `shutdown` resolves.
///
/// # Errors
///
/// When the address cannot be bound.
pub async fn serve(
    args: &ServerArgs,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
    }
    let nodelay = args.nodelay;
    let listener = listener.tap_io(move |tcp| {
        if nodelay {
            let _ = tcp.set_nodelay(true);
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn os_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
