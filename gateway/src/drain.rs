//! Graceful shutdown that drains instead of sleeping.
//!
//! Pingora's SIGTERM handling sleeps a fixed grace period. Instead, SIGTERM
//! puts the gateway in draining mode (new requests get 503 with
//! `Connection: close`), waits until the requests in flight have finished
//! (at most `shutdown_grace_s`), and only then lets Pingora stop. An idle
//! gateway therefore exits at once and a busy one loses no request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    draining: AtomicBool,
}

/// Held by each request's context; dropping it ends the request.
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

pub struct DrainingShutdown {
    pub drain: Arc<Drain>,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (signal(SignalKind::quit()), signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.drain.draining.store(true, Ordering::SeqCst);
                let end = Instant::now() + self.grace;
                tracing::info!(in_flight = self.drain.in_flight(), "SIGTERM: draining requests in flight");
                while self.drain.in_flight() > 0 && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if self.drain.in_flight() > 0 {
                    tracing::warn!(in_flight = self.drain.in_flight(), "grace period over with requests still in flight");
                }
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}
