//! Prometheus metrics, served at `/metrics`.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Requests by route label, status and authorization decision.
    pub requests: IntCounterVec,
    pub decision_seconds: Histogram,
    pub upstream_seconds: Histogram,
    pub worker_restarts: IntCounterVec,
    pub lazy_starts: IntCounter,
    pub idle_stops: IntCounter,
    pub lazy_evictions: IntCounter,
    /// Errors inside authorization (each one was a deny).
    pub authz_errors: IntCounter,
    pub authn_failures: IntCounter,
    /// Requests being served now (set from the drain counter when scraped).
    pub in_flight: IntGauge,
    /// Decision-log lines the writer could not take (set when scraped).
    pub decision_log_dropped: IntGauge,
    /// Connections closed because a request header did not arrive in time.
    pub header_timeouts: IntCounter,
    /// Failed writes of the decision log (set when scraped).
    pub decision_log_failures: IntGauge,
    /// Requests the shadow set decides differently, by action and direction.
    pub shadow_differences: IntCounterVec,
    /// Requests refused with 429 by a per-actor limit, by limit.
    pub throttled: IntCounterVec,
    /// Requests waiting for their actor's turn (set when scraped).
    pub throttle_waiting: IntGauge,
    /// TLS certificate reloads on SIGHUP, by result (`ok`, `failed`), so a
    /// renewal that did not take can be alerted on before the old one expires.
    pub tls_reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("omnigraph_requests_total", "Requests by route, status and decision"), &["route", "status", "decision"])?;
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new("omnigraph_decision_seconds", "Cedar decision latency")
                .buckets(vec![1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2]),
        )?;
        let upstream_seconds = Histogram::with_opts(
            HistogramOpts::new("omnigraph_upstream_seconds", "Time from forwarding to the worker until the response is logged")
                .buckets(vec![1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 2.0, 10.0]),
        )?;
        let worker_restarts = IntCounterVec::new(Opts::new("omnigraph_worker_restarts_total", "Worker restarts after a crash"), &["graph"])?;
        let authz_errors = IntCounter::new("omnigraph_authz_errors_total", "Errors inside authorization, each counted as a deny")?;
        let authn_failures = IntCounter::new("omnigraph_authn_failures_total", "Requests rejected with 401")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(decision_seconds.clone()))?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        registry.register(Box::new(worker_restarts.clone()))?;
        registry.register(Box::new(authz_errors.clone()))?;
        let in_flight = IntGauge::new("omnigraph_requests_in_flight", "Requests being served, this scrape included")?;
        registry.register(Box::new(authn_failures.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let decision_log_dropped = IntGauge::new("omnigraph_decision_log_dropped", "Decision-log lines dropped because the writer fell behind")?;
        registry.register(Box::new(decision_log_dropped.clone()))?;
        let header_timeouts = IntCounter::new("omnigraph_header_timeouts_total", "Connections closed because a request header did not arrive within server.header_timeout_ms")?;
        registry.register(Box::new(header_timeouts.clone()))?;
        let shadow_differences = IntCounterVec::new(Opts::new("omnigraph_shadow_differences_total", "Requests the shadow policy set decides differently from the live one"), &["action", "direction"])?;
        registry.register(Box::new(shadow_differences.clone()))?;
        let throttled = IntCounterVec::new(Opts::new("omnigraph_throttled_total", "Requests refused with 429 by a per-actor limit"), &["limit"])?;
        registry.register(Box::new(throttled.clone()))?;
        let throttle_waiting = IntGauge::new("omnigraph_throttle_waiting", "Requests waiting for their actor's turn under limits.per_actor_inflight or per_actor_rps")?;
        registry.register(Box::new(throttle_waiting.clone()))?;
        let tls_reloads = IntCounterVec::new(Opts::new("omnigraph_tls_reloads_total", "TLS certificate reloads on SIGHUP, by result"), &["result"])?;
        registry.register(Box::new(tls_reloads.clone()))?;
        let decision_log_failures = IntGauge::new("omnigraph_decision_log_write_failures", "Failed writes of the decision log, each retried")?;
        registry.register(Box::new(decision_log_failures.clone()))?;
        let lazy_starts = IntCounter::new("omnigraph_worker_lazy_starts_total", "Workers of lazy graphs started by a request")?;
        registry.register(Box::new(lazy_starts.clone()))?;
        let idle_stops = IntCounter::new("omnigraph_worker_idle_stops_total", "Workers of lazy graphs stopped after server.idle_stop_s without requests")?;
        registry.register(Box::new(idle_stops.clone()))?;
        let lazy_evictions = IntCounter::new(
            "omnigraph_worker_lazy_evictions_total",
            "Workers of lazy graphs stopped to make room for another under limits.max_lazy_workers",
        )?;
        registry.register(Box::new(lazy_evictions.clone()))?;
        Ok(Metrics { registry, lazy_starts, idle_stops, lazy_evictions, requests, decision_seconds, upstream_seconds, worker_restarts, authz_errors, authn_failures, in_flight, decision_log_dropped, decision_log_failures, header_timeouts, throttled, throttle_waiting, shadow_differences, tls_reloads })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}
