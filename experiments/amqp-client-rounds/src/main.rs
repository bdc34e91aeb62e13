//! One publisher, one persistent message in flight at a time: publish,
//! wait for the broker's confirm, repeat, for a number of seconds. Prints
//! the rounds per second, the mean round trip and the client's CPU per
//! round (utime + stime of this process from `/proc/self/stat`), with
//! lapin (the service's AMQP client: every frame goes through its I/O
//! thread) or amqprs (tokio tasks only).
//!
//! `amqp-client-rounds lapin|amqprs SECONDS [BODY_BYTES]`; the broker is
//! on `AMQP_HOST` (default 127.0.0.1), port 5672, guest/guest. Each run declares
//! a durable classic v2 queue of its own and deletes it at the end.

use anyhow::{Context, bail};
use std::time::{Duration, Instant};

/// This process's CPU seconds so far (10 ms resolution).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = &stat[stat.rfind(')').context("no ')' in /proc/self/stat")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Runs `round` for a warm-up, then for `seconds`, and prints what the
/// rounds took.
async fn measure(
    client: &str,
    seconds: Duration,
    mut round: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for _ in 0..WARM_UP_ROUNDS {
        round().await?;
    }
    let (started, cpu) = (Instant::now(), cpu_seconds()?);
    let mut rounds = 0_u64;
    while started.elapsed() < seconds {
        round().await?;
        rounds += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu;
    let per_round = |total: f64| total / rounds as f64;
    println!(
        "RESULT\t{client}\trounds/s {:.0}\tmean round {:.3} ms\tclient CPU {:.1} us/round\t({rounds} rounds)",
        rounds as f64 / wall,
        per_round(wall * 1e3),
        per_round(cpu * 1e6),
    );
    Ok(())
}

const WARM_UP_ROUNDS: u32 = 200;

async fn lapin_rounds(
    url: &str,
    queue: &str,
    seconds: Duration,
    body: &[u8],
) -> anyhow::Result<()> {
    use lapin::{BasicProperties, Connection, ConnectionProperties, options::*, types::*};
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-version".into(), AMQPValue::LongInt(2));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let round = async || {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            bail!("the broker did not ack: {confirm:?}");
        }
        anyhow::Ok(())
    };
    // The queue goes whatever the rounds did; their error comes first.
    let measured = measure("lapin", seconds, round).await;
    let deleted = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    measured?;
    deleted?;
    Ok(())
}

/// amqprs reports confirms through a channel callback; with one message in
/// flight the delivery tag is not needed.
struct Confirms(tokio::sync::mpsc::UnboundedSender<bool>);

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _: &amqprs::channel::Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &amqprs::channel::Channel, _: amqprs::Ack) {
        let _ = self.0.send(true);
    }
    async fn publish_nack(&mut self, _: &amqprs::channel::Channel, _: amqprs::Nack) {
        let _ = self.0.send(false);
    }
    async fn publish_return(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Return,
        _: amqprs::BasicProperties,
        _: Vec<u8>,
    ) {
    }
}

async fn amqprs_rounds(
    host: &str,
    queue: &str,
    seconds: Duration,
    body: &[u8],
) -> anyhow::Result<()> {
    use amqprs::channel::*;
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let connection =
        Connection::open(&OpenConnectionArguments::new(host, 5672, "guest", "guest")).await?;
    let channel = connection.open_channel(None).await?;
    let (confirmed, mut confirms) = tokio::sync::mpsc::unbounded_channel();
    channel.register_callback(Confirms(confirmed)).await?;
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await?;
    let mut arguments = amqprs::FieldTable::new();
    arguments.insert("x-queue-version".try_into()?, amqprs::FieldValue::I(2));
    channel
        .queue_declare(
            QueueDeclareArguments::new(queue)
                .durable(true)
                .arguments(arguments)
                .finish(),
        )
        .await?;
    let mut properties = amqprs::BasicProperties::default();
    properties.with_delivery_mode(2);
    let publish = BasicPublishArguments::new("", queue);
    let round = async || {
        channel
            .basic_publish(properties.clone(), body.to_vec(), publish.clone())
            .await?;
        if !confirms.recv().await.context("channel closed")? {
            bail!("the broker did not ack");
        }
        anyhow::Ok(())
    };
    let measured = measure("amqprs", seconds, round).await;
    let deleted = channel.queue_delete(QueueDeleteArguments::new(queue)).await;
    measured?;
    deleted?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let (Some(client), Some(seconds)) = (arguments.get(1), arguments.get(2)) else {
        bail!("usage: amqp-client-rounds lapin|amqprs SECONDS [BODY_BYTES]");
    };
    let seconds = Duration::from_secs(seconds.parse()?);
    let body = vec![7_u8; arguments.get(3).map_or(Ok(2400), |bytes| bytes.parse())?];
    let host = std::env::var("AMQP_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let url = format!("amqp://guest:guest@{host}:5672/%2f");
    let queue = format!("amqp-client-rounds.{client}.{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match client.as_str() {
            "lapin" => lapin_rounds(&url, &queue, seconds, &body).await,
            "amqprs" => amqprs_rounds(&host, &queue, seconds, &body).await,
            other => bail!("unknown client {other}: lapin or amqprs"),
        }
    })
}
