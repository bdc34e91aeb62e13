//! Loading, validating and showing settings.

use super::*;

#[test]
fn defaults_load_and_validate() {
    let s = Settings::defaults();
    s.validate().expect("defaults are valid");
    assert_eq!(s.amqp.queue, "likes.events");
    assert_eq!(s.amqp.dead_letter_queue, "likes.dead");
    assert_eq!(s.worker.batch_size.get(), 500);
    assert_eq!(s.worker.batch_max_wait_ms, 50);
    assert_eq!(s.worker.prefetch(), 1000);
    assert_eq!(s.api.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(s.amqp.tls_ca_file, "");
    assert_eq!(s.database.tls_ca_file, "");
    assert_eq!(s.telemetry.otlp_endpoint, "", "tracing is off by default");
    assert_eq!(s.telemetry.sample_ratio, 1.0);
}

#[test]
fn an_amqp_client_certificate_needs_its_key() {
    let mut s = Settings::defaults();
    s.amqp.tls_client_cert_file = "client.pem".into();
    let err = s.validate().expect_err("a certificate without its key");
    assert!(
        err.to_string().contains("amqp.tls_client_key_file"),
        "{err}"
    );
    s.amqp.tls_client_cert_file.clear();
    s.amqp.tls_client_key_file = "client.key".into();
    assert!(s.validate().is_err(), "a key without its certificate");
    s.amqp.tls_client_cert_file = "client.pem".into();
    s.validate().expect("both");
}

#[test]
fn sample_ratio_is_a_share() {
    let mut s = Settings::defaults();
    for ratio in [0.0, 0.01, 1.0] {
        s.telemetry.sample_ratio = ratio;
        s.validate().expect("a share");
    }
    for ratio in [-0.1, 1.5, f64::NAN] {
        s.telemetry.sample_ratio = ratio;
        let err = s.validate().expect_err("not a share");
        assert!(err.to_string().contains("telemetry.sample_ratio"), "{err}");
    }
}

#[test]
fn environment_overrides_defaults() {
    let env = [
        ("LIKES__WORKER__BATCH_SIZE", "1000"),
        ("LIKES__WORKER__BATCH_MAX_WAIT_MS", "20"),
        ("LIKES__AMQP__QUEUE", "q.events"),
        ("LIKES__AMQP__QUEUE_TYPE", "quorum"),
        ("LIKES__API__LISTEN", "0.0.0.0:6000"),
        ("LIKES__LOG__FORMAT", "json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let s = Settings::load_from(None, Some(env)).expect("valid overrides");
    assert_eq!(s.worker.batch_size.get(), 1000);
    assert_eq!(s.worker.batch_max_wait_ms, 20);
    assert_eq!(s.worker.prefetch(), 2000);
    assert_eq!(s.amqp.queue, "q.events");
    assert_eq!(s.amqp.queue_type, QueueType::Quorum);
    assert_eq!(s.api.listen.port(), 6000);
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.amqp.dead_letter_queue, "likes.dead");
}

#[test]
fn a_worker_consumes_every_shard_or_the_listed_ones() {
    let mut s = Settings::defaults();
    assert_eq!(s.consumed_shards().expect("default"), vec![0]);
    s.amqp.shards = 4;
    assert_eq!(s.consumed_shards().expect("all"), vec![0, 1, 2, 3]);
    s.worker.shards = " 2, 0,2".into();
    assert_eq!(s.consumed_shards().expect("listed"), vec![2, 0]);
    s.worker.shards = "4".into();
    let err = s.validate().expect_err("shard 4 of 4");
    assert!(err.to_string().contains("worker.shards"), "{err}");
    s.worker.shards = "one".into();
    assert!(s.validate().is_err());
    s.worker.shards.clear();
    s.amqp.shards = 0;
    let err = s.validate().expect_err("no shard");
    assert!(err.to_string().contains("amqp.shards"), "{err}");
}

#[test]
fn zero_is_refused_where_it_would_mean_nothing_works() {
    for (variable, key) in [
        ("LIKES__WORKER__BATCH_SIZE", "batch_size"),
        ("LIKES__DATABASE__POOL_SIZE", "pool_size"),
        (
            "LIKES__API__MAX_CONCURRENT_REQUESTS",
            "max_concurrent_requests",
        ),
        ("LIKES__API__COUNT_CACHE_TTL_MS", "count_cache_ttl_ms"),
    ] {
        let env = [(variable.to_owned(), "0".to_owned())]
            .into_iter()
            .collect();
        let err = Settings::load_from(None, Some(env)).expect_err("zero");
        assert!(err.to_string().contains("nonzero"), "{key}: {err}");
    }
}

#[test]
fn batch_size_is_read_from_the_environment() {
    let env = [("LIKES__WORKER__BATCH_SIZE", "2000")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let s = Settings::load_from(None, Some(env)).expect("valid overrides");
    assert_eq!(s.worker.batch_size.get(), 2000);
    assert_eq!(s.worker.prefetch(), 4000);
}

#[test]
fn passwords_are_masked_when_shown() {
    let url = SecretUrl::new("amqp://guest:s3cret@host:5672/%2f");
    assert_eq!(url.to_string(), "amqp://guest:***@host:5672/%2f");
    assert!(!format!("{url:?}").contains("s3cret"));
    assert_eq!(url.expose(), "amqp://guest:s3cret@host:5672/%2f");
    assert_eq!(format!("{:?}", Secret::new("t0ken")), "\"***\"");
    assert_eq!(
        SecretUrl::new("postgres://postgres@127.0.0.1/likes").to_string(),
        "postgres://postgres@127.0.0.1/likes"
    );
    assert_eq!(
        SecretUrl::new("amqp://u:p1@a/%2f,amqp://u:p2@b/%2f").to_string(),
        "amqp://u:***@a/%2f,amqp://u:***@b/%2f"
    );
    let key_values = SecretUrl::new("host=db user=likes password='s3 cret' dbname=likes");
    assert_eq!(
        key_values.to_string(),
        "host='db' user='likes' password='***' dbname='likes'"
    );
    assert_eq!(
        SecretUrl::new("host=db dbname=likes").to_string(),
        "host=db dbname=likes"
    );
    assert_eq!(SecretUrl::new("host=db password='open").to_string(), "***");
}

fn env_of(pairs: &[(&str, &str)]) -> ::config::Map<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A settings file of this test's own under the temporary directory.
fn settings_file(test: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("likes-config-{test}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("writing a settings file");
    path
}

fn unknown_of(err: ConfigError) -> Vec<UnknownSetting> {
    match err {
        ConfigError::Unknown(unknown) => unknown,
        other => panic!("expected unknown settings, got {other}"),
    }
}

#[test]
fn a_misspelt_variable_is_refused_with_the_nearest_setting() {
    let env = env_of(&[("LIKES__WORKER__BATCH_SIZ", "10")]);
    let err = Settings::load_from(None, Some(env)).expect_err("a typo");
    assert_eq!(
        err.to_string(),
        "LIKES__WORKER__BATCH_SIZ is not a setting; did you mean LIKES__WORKER__BATCH_SIZE?"
    );
    assert_eq!(
        unknown_of(err),
        vec![UnknownSetting {
            source: SettingSource::Environment,
            name: "LIKES__WORKER__BATCH_SIZ".into(),
            suggestion: Some("LIKES__WORKER__BATCH_SIZE".into()),
        }]
    );
}

#[test]
fn an_unknown_key_in_the_file_is_refused_naming_the_file() {
    let path = settings_file(
        "unknown-key",
        "[worker]\nbatch_size = 100\nbatch_max_wait = 20\n",
    );
    let err = Settings::load_from(Some(path.clone()), Some(env_of(&[]))).expect_err("a typo");
    std::fs::remove_file(&path).expect("removing the settings file");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: worker.batch_max_wait is not a setting; did you mean worker.batch_max_wait_ms?",
            path.display()
        )
    );
}

#[test]
fn a_name_far_from_every_setting_gets_no_suggestion() {
    let env = env_of(&[("LIKES__WORKER__FLUX_CAPACITOR", "1")]);
    let err = Settings::load_from(None, Some(env)).expect_err("no such setting");
    assert_eq!(
        err.to_string(),
        "LIKES__WORKER__FLUX_CAPACITOR is not a setting"
    );
    let path = settings_file("far-key", "[cache]\nttl_ms = 5\n");
    let err = Settings::load_from(Some(path.clone()), Some(env_of(&[]))).expect_err("no such key");
    std::fs::remove_file(&path).expect("removing the settings file");
    assert_eq!(unknown_of(err)[0].suggestion, None);
}

#[test]
fn a_setting_in_the_wrong_section_or_none_suggests_its_section() {
    let env = env_of(&[
        ("LIKES__API__BATCH_SIZE", "10"),
        ("LIKES__POOL_SIZE", "4"),
        ("LIKES__WORKER_SHARDS", "4"),
    ]);
    let err = Settings::load_from(None, Some(env)).expect_err("misplaced");
    let suggestions: Vec<_> = unknown_of(err)
        .into_iter()
        .map(|u| (u.name, u.suggestion))
        .collect();
    assert_eq!(
        suggestions,
        vec![
            (
                "LIKES__API__BATCH_SIZE".into(),
                Some("LIKES__WORKER__BATCH_SIZE".into())
            ),
            (
                "LIKES__POOL_SIZE".into(),
                Some("LIKES__DATABASE__POOL_SIZE".into())
            ),
            (
                "LIKES__WORKER_SHARDS".into(),
                Some("LIKES__WORKER__SHARDS".into())
            ),
        ]
    );
}

#[test]
fn one_underscore_after_likes_is_a_misspelt_setting_unless_no_double_follows() {
    let env = env_of(&[
        ("LIKES_DATABASE__URL", "postgres://elsewhere/likes"),
        ("LIKES_CONFIG", "/etc/likes.toml"),
        ("LIKES_HOME", "/srv/likes"),
    ]);
    let err = Settings::load_from(None, Some(env)).expect_err("one underscore");
    assert_eq!(
        err.to_string(),
        "LIKES_DATABASE__URL is not a setting; did you mean LIKES__DATABASE__URL?"
    );
}

#[test]
fn every_unknown_name_is_reported_at_once_file_first() {
    let path = settings_file("every-unknown", "[amqp]\nqueue_typ = \"quorum\"\n");
    let env = env_of(&[
        ("LIKES__LOG__FROMAT", "json"),
        ("LIKES__AMQP__URI", "amqp://x"),
    ]);
    let err = Settings::load_from(Some(path.clone()), Some(env)).expect_err("three typos");
    std::fs::remove_file(&path).expect("removing the settings file");
    let names: Vec<_> = unknown_of(err).into_iter().map(|u| u.name).collect();
    assert_eq!(
        names,
        ["amqp.queue_typ", "LIKES__AMQP__URI", "LIKES__LOG__FROMAT"]
    );
}

#[test]
fn valid_file_and_variables_still_override_and_other_variables_are_ignored() {
    let path = settings_file(
        "valid",
        "[worker]\nbatch_size = 100\n[amqp]\nqueue = \"from.file\"\n",
    );
    let env = env_of(&[
        ("LIKES__AMQP__QUEUE", "from.env"),
        // As the config crate reads them: any case.
        ("likes__worker__batch_max_wait_ms", "7"),
        // Not settings: the file's variable, and one underscore.
        ("LIKES_CONFIG", "/elsewhere.toml"),
        ("LIKES_HOME", "/srv"),
        ("PATH", "/usr/bin"),
        // What Kubernetes injects into every pod for a Service named
        // likes-api (service links): never settings, never refused.
        ("LIKES_API_SERVICE_HOST", "10.0.0.7"),
        ("LIKES_API_SERVICE_PORT_GRPC", "50051"),
        ("LIKES_API_PORT", "tcp://10.0.0.7:50051"),
        ("LIKES_API_PORT_50051_TCP_PROTO", "tcp"),
    ]);
    let s = Settings::load_from(Some(path.clone()), Some(env)).expect("valid overrides");
    std::fs::remove_file(&path).expect("removing the settings file");
    assert_eq!(s.worker.batch_size.get(), 100);
    assert_eq!(s.worker.batch_max_wait_ms, 7);
    assert_eq!(s.amqp.queue, "from.env");
}

#[test]
fn the_shown_settings_mask_secrets_and_load_back_as_a_file() {
    let env = env_of(&[
        ("LIKES__AMQP__URL", "amqp://guest:s3cret@rabbit:5672/%2f"),
        ("LIKES__API__AUTH_TOKEN", "t0ken"),
        ("LIKES__WORKER__BATCH_SIZE", "42"),
    ]);
    let s = Settings::load_from(None, Some(env)).expect("valid overrides");
    let shown = s.to_toml().expect("settings are TOML");
    assert!(
        shown.contains("url = \"amqp://guest:***@rabbit:5672/%2f\""),
        "{shown}"
    );
    assert!(shown.contains("auth_token = \"***\""), "{shown}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("t0ken"),
        "{shown}"
    );

    // Pasted back as a file it gives the same settings, and its keys are
    // exactly the settings.
    let path = settings_file("shown", &shown);
    let again = Settings::load_from(Some(path.clone()), Some(env_of(&[])));
    std::fs::remove_file(&path).expect("removing the settings file");
    let again = again.expect("the shown settings load");
    assert_eq!(again.to_toml().expect("settings are TOML"), shown);
    use ::config::Source as _;
    let keys_of = |source: ::config::File<_, _>| {
        keys::KnownKeys::of(&source.collect().expect("TOML")).into_keys()
    };
    assert_eq!(
        keys_of(::config::File::from_str(&shown, ::config::FileFormat::Toml)),
        keys_of(defaults_source())
    );
}

#[test]
fn otel_variables_set_tracing_and_likes_variables_win() {
    let load = |vars: &[(&str, &str)]| {
        let env = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(None, Some(env))
    };
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
    ];
    let s = load(&otel).expect("valid");
    assert_eq!(s.telemetry.otlp_endpoint, "http://collector:4317");
    assert!((s.telemetry.sample_ratio - 0.1).abs() < 1e-9);
    let mut both = otel.to_vec();
    both.push(("LIKES__TELEMETRY__OTLP_ENDPOINT", "http://mine:4317"));
    both.push(("LIKES__TELEMETRY__SAMPLE_RATIO", "0.5"));
    let s = load(&both).expect("valid");
    assert_eq!(s.telemetry.otlp_endpoint, "http://mine:4317");
    assert!((s.telemetry.sample_ratio - 0.5).abs() < 1e-9);
    let error = load(&[("OTEL_TRACES_SAMPLER", "xray")]).expect_err("not followed");
    assert!(error.to_string().contains("OTEL_TRACES_SAMPLER"), "{error}");
}
