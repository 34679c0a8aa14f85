//! The gateway of Edge Serverless Box: an HTTPS API Gateway for the template's `Api` and
//! `HttpApi` routes (with the seed's JWT auth), the Lambda Invoke API, per-function worker
//! pools on one or more agents (scale to zero, provisioned concurrency, fair waiting),
//! circuit breakers, trace ids, Prometheus metrics and structured logs.
//!
//! The CLI builds a [`Config`] (see its fields for the environment names) and a list of
//! [`FunctionSpec`]s, then calls [`serve`], or [`Server::bind`] and [`Server::run`] to
//! learn the bound addresses first and to keep a [`Reloader`] (live reload of the
//! functions, and of the agents with [`Reloader::reload_agents`]). With
//! [`Config::admin_socket`] set, a unix socket serves `GET /status`.

mod admin;
pub mod agents;
pub mod auth;
pub mod breaker;
pub mod cluster;
pub mod config;
pub mod events;
mod gateway;
pub mod ids;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod routes;
mod server;
pub mod tls;

pub use agents::AgentReloadReport;
pub use config::{AgentAddr, Config};
pub use gateway::{FunctionSpec, ReloadReport};
pub use server::{serve, Reloader, Server};
