//! `likes-admin migrate` run once with a role that may change the schema,
//! then a worker with `database.migrate_on_start = false` and a role that
//! can only read and write the tables; and `likes-admin recount` from the
//! command line.

use diesel_async::RunQueryDsl;
use likes_common::config::SecretUrl;
use likes_testkit::{
    TestEnv,
    load::{check_exactly, like_all, pairs},
    process::{ServiceProcess, command},
};
use std::{path::Path, process::Output, time::Duration};

const ADMIN: &str = env!("CARGO_BIN_EXE_likes-admin");

fn admin(settings: &likes_common::Settings, args: &[&str]) -> anyhow::Result<Output> {
    Ok(command(Path::new(ADMIN), settings).args(args).output()?)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A login role of this test's own, dropped (with its grants) at the end,
/// whatever happens: roles belong to the whole server, not the database.
struct Role {
    name: String,
    database_url: String,
}

impl Role {
    async fn create(env: &TestEnv) -> anyhow::Result<Self> {
        let name = format!("likes_test_{}_runtime", env.id());
        let mut conn = env.db().await?;
        for statement in [
            format!("CREATE ROLE {name} LOGIN"),
            format!("GRANT USAGE ON SCHEMA public TO {name}"),
            format!("GRANT SELECT, INSERT, UPDATE ON likes, like_counts TO {name}"),
            format!("GRANT SELECT ON __diesel_schema_migrations TO {name}"),
        ] {
            diesel::sql_query(statement).execute(&mut conn).await?;
        }
        Ok(Self {
            name,
            database_url: env.settings.database.url.expose().to_owned(),
        })
    }

    /// `url` with this role as the user.
    fn url(&self) -> anyhow::Result<String> {
        let target = likes_db::Target::parse(&self.database_url)?;
        let database = target.dbname().unwrap_or_default();
        Ok(format!(
            "postgres://{}@{}/{database}?sslmode=disable",
            self.name,
            target.server_label()
        ))
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let url = self.database_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()?.block_on(async {
                let mut conn = likes_db::establish(&url, "").await?;
                diesel::sql_query(format!("DROP OWNED BY {name}"))
                    .execute(&mut conn)
                    .await?;
                diesel::sql_query(format!("DROP ROLE {name}"))
                    .execute(&mut conn)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("cannot drop the test role {}: {dropped:?}", self.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_once_then_the_worker_runs_with_a_role_that_cannot_change_the_schema()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let first = admin(&env.settings, &["migrate"])?;
    assert!(first.status.success(), "{first:?}");
    assert!(
        stdout(&first).starts_with("applied 3 migration(s)"),
        "{first:?}"
    );
    let again = admin(&env.settings, &["migrate"])?;
    assert_eq!(stdout(&again), "no pending migration\n", "{again:?}");

    let role = Role::create(&env).await?;
    let mut runtime = env.settings.clone();
    runtime.database.url = SecretUrl::new(role.url()?);
    runtime.database.migrate_on_start = false;
    // The role cannot migrate: with migrate_on_start left on, the worker
    // stops at once instead of running.
    let mut migrating = runtime.clone();
    migrating.database.migrate_on_start = true;
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking({
            let migrating = migrating.clone();
            move || command(Path::new(env!("CARGO_BIN_EXE_likes-worker")), &migrating).output()
        }),
    )
    .await???;
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && refusal.contains("permission denied"),
        "{refusal}"
    );

    let worker = ServiceProcess::spawn(Path::new(env!("CARGO_BIN_EXE_likes-worker")), &runtime)?;
    let api = env.spawn_api().await?;
    let outcome = like_all(
        std::slice::from_ref(&api.client),
        pairs("runtime-role", 300, 3),
        32,
        Duration::from_secs(30),
    )
    .await?;
    env.wait_for_stored_pairs(300, Duration::from_secs(30))
        .await?;
    check_exactly(&mut env.db().await?, &outcome.acknowledged).await?;
    drop(worker);

    // A newer release's migration not run yet: the worker refuses to start,
    // naming it and the command that runs it.
    let mut conn = env.db().await?;
    diesel::sql_query(
        "DELETE FROM __diesel_schema_migrations \
         WHERE version = (SELECT max(version) FROM __diesel_schema_migrations)",
    )
    .execute(&mut conn)
    .await?;
    let behind = tokio::task::spawn_blocking(move || {
        command(Path::new(env!("CARGO_BIN_EXE_likes-worker")), &runtime).output()
    })
    .await??;
    let stderr = String::from_utf8_lossy(&behind.stderr);
    assert!(!behind.status.success(), "{behind:?}");
    assert!(
        stderr.contains("20261206000002") && stderr.contains("likes-admin migrate"),
        "{stderr}"
    );
    drop(role);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn likes_admin_recount_reports_and_repairs_a_drifted_counter() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let worker = env.spawn_worker().await?;
    let outcome = like_all(
        std::slice::from_ref(&api.client),
        pairs("recount-cli", 40, 2),
        16,
        Duration::from_secs(30),
    )
    .await?;
    env.wait_for_stored_pairs(40, Duration::from_secs(30))
        .await?;
    drop(worker);
    let mut conn = env.db().await?;
    diesel::sql_query("UPDATE like_counts SET count = 7 WHERE post_id = 'post-1'")
        .execute(&mut conn)
        .await?;

    let dry = admin(&env.settings, &["recount", "--dry-run"])?;
    assert_eq!(dry.status.code(), Some(1), "{dry:?}");
    assert_eq!(
        stdout(&dry),
        "post post-1: counter 7, liked pairs 20: not repaired\n\
         checked 2 post(s), 1 drifted\n"
    );
    let other = admin(&env.settings, &["recount", "--post", "post-0"])?;
    assert_eq!(
        stdout(&other),
        "checked 1 post(s), 0 drifted\n",
        "{other:?}"
    );
    let repaired = admin(&env.settings, &["recount", "--batch", "1"])?;
    assert!(repaired.status.success(), "{repaired:?}");
    assert_eq!(
        stdout(&repaired),
        "post post-1: counter 7, liked pairs 20: repaired to 20\n\
         checked 2 post(s), 1 drifted\n"
    );
    check_exactly(&mut conn, &outcome.acknowledged).await?;
    Ok(())
}
