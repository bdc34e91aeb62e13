//! The database circuit as operators see it (the `LikesDatabaseCircuitOpen`
//! alert reads it): `likes_db_circuit_open{server}` is 1 while the api finds
//! PostgreSQL unreachable and 0 again once it connects.

use crate::api_process;
use likes_proto::pb::GetLikeCountRequest;
use likes_testkit::{TestEnv, eventually, proxy::FaultProxy, sample, scrape};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_gauge_is_one_while_postgresql_is_unreachable() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let proxy = FaultProxy::start("127.0.0.1:5432".parse()?).await?;
    let settings = env.settings_with_database_at(proxy.addr())?;
    let (_api, client, settings) = api_process(&env, settings, true).await?;
    let metrics = settings.api.metrics_listen.clone();
    let server = format!("server=\"{}\"", proxy.addr());
    let circuit = |want: f64| {
        let (metrics, server, mut client) = (metrics.clone(), server.clone(), client.clone());
        async move {
            // A cold read makes the pool try the database.
            let request = GetLikeCountRequest {
                post_id: format!("cold-{}", uuid::Uuid::new_v4()),
            };
            let _ = client.get_like_count(request).await;
            let body = scrape(&metrics).await?;
            Ok((sample(&body, "likes_db_circuit_open", Some(&server)) == Some(want)).then_some(()))
        }
    };
    eventually(
        Duration::from_secs(10),
        "the circuit closed at start",
        || circuit(0.0),
    )
    .await?;
    proxy.cut();
    eventually(Duration::from_secs(10), "the circuit open", || circuit(1.0)).await?;
    proxy.restore();
    eventually(Duration::from_secs(10), "the circuit closed again", || {
        circuit(0.0)
    })
    .await
}
