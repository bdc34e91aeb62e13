//! OpenTelemetry's standard variables, as operators and the OpenTelemetry
//! Operator set them: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) becomes `telemetry.otlp_endpoint`, and
//! `OTEL_TRACES_SAMPLER` with `OTEL_TRACES_SAMPLER_ARG` becomes
//! `telemetry.sample_ratio`. They are a layer of settings just above the
//! defaults: a settings file or a `LIKES__*` variable wins when both are
//! set. (`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are read where
//! the trace pipeline is built.)

use super::{ConfigError, invalid};

/// The settings the variables give, as a TOML settings file (empty when
/// none is set); `var` reads a variable.
pub(super) fn settings(var: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut telemetry = toml::Table::new();
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|endpoint| !endpoint.trim().is_empty());
    if let Some(endpoint) = endpoint {
        telemetry.insert("otlp_endpoint".into(), endpoint.trim().into());
    }
    if let Some(sampler) = var("OTEL_TRACES_SAMPLER").filter(|s| !s.trim().is_empty()) {
        let ratio = ratio(sampler.trim(), var("OTEL_TRACES_SAMPLER_ARG").as_deref())?;
        telemetry.insert("sample_ratio".into(), ratio.into());
    }
    if telemetry.is_empty() {
        return Ok(String::new());
    }
    let mut file = toml::Table::new();
    file.insert("telemetry".into(), telemetry.into());
    Ok(toml::to_string(&file)?)
}

/// The share of traces a sampler keeps. Every sampler here is parent-based
/// (a call whose caller's trace is sampled is traced), as the service's
/// own is; `traceidratio` is taken as `parentbased_traceidratio`.
fn ratio(sampler: &str, arg: Option<&str>) -> Result<f64, ConfigError> {
    match sampler {
        "always_on" | "parentbased_always_on" => Ok(1.0),
        "always_off" | "parentbased_always_off" => Ok(0.0),
        "traceidratio" | "parentbased_traceidratio" => match arg.map(str::trim) {
            None | Some("") => Ok(1.0),
            Some(arg) => arg
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .ok_or_else(|| {
                    invalid(
                        "OTEL_TRACES_SAMPLER_ARG",
                        format!("{arg:?} is not a ratio from 0 to 1"),
                    )
                }),
        },
        other => Err(invalid(
            "OTEL_TRACES_SAMPLER",
            format!(
                "{other:?} is not a sampler this service follows (always_on, always_off, \
                 traceidratio and their parentbased_ forms)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn of(vars: &[(&str, &str)]) -> Result<String, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        settings(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_variables_become_settings() {
        assert_eq!(of(&[]).expect("valid"), "");
        let text = of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .expect("valid");
        assert!(
            text.contains("otlp_endpoint = \"http://collector:4317\""),
            "{text}"
        );
        assert!(text.contains("sample_ratio = 0.25"), "{text}");
        // The traces-only endpoint wins over the general one.
        let text = of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ])
        .expect("valid");
        assert!(
            text.contains("http://b:4317") && text.contains("sample_ratio = 0.0"),
            "{text}"
        );
    }

    #[test]
    fn a_sampler_it_does_not_follow_is_refused_by_name() {
        let error = of(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).expect_err("refused");
        assert!(error.to_string().contains("OTEL_TRACES_SAMPLER"), "{error}");
        let error = of(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .expect_err("refused");
        assert!(
            error.to_string().contains("OTEL_TRACES_SAMPLER_ARG"),
            "{error}"
        );
    }
}
