//! `--config FILE`: a YAML map of flag values (`flag-name: value`) placed before the
//! command line, so flags given on the command line win.
use clap::Parser;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("reading config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a YAML map of flag names to scalars or lists.
    #[error("config file {path}: {reason}")]
    Invalid { path: String, reason: String },
    /// The flags (from the file or the command line) are invalid.
    #[error(transparent)]
    Flags(#[from] clap::Error),
}

/// Turns a YAML map of flag values into `--flag=value` arguments (lists comma-joined;
/// `true` switches a boolean flag on, `false` leaves it off).
pub fn file_args(yaml: &str) -> Result<Vec<String>, String> {
    let map: std::collections::BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    map.into_iter()
        .filter(|(_, value)| value.as_bool() != Some(false))
        .map(|(key, value)| {
            let value = match value {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(_) => return Ok(format!("--{key}")),
                serde_yaml::Value::Sequence(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(String::from)
                            .ok_or_else(|| format!("{key}: list items must be strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
                _ => return Err(format!("{key}: expected a string, number, boolean or list")),
            };
            Ok(format!("--{key}={value}"))
        })
        .collect()
}

/// Parses `argv`, with the values of the file named by `config_of` (if any) placed before
/// the command line so the command line wins.
///
/// # Errors
/// When the file can't be read or parsed, or a flag is invalid; [`Error::Flags`] carries
/// clap's own message (and `--help`/`--version` output).
pub fn load<P: Parser>(argv: Vec<String>, config_of: impl Fn(&P) -> &str) -> Result<P, Error> {
    let first = P::try_parse_from(&argv)?;
    let path = config_of(&first).to_string();
    if path.is_empty() {
        return Ok(first);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let from_file = file_args(&text).map_err(|reason| Error::Invalid {
        path: path.clone(),
        reason,
    })?;
    // The command line wins: drop the file's value of any flag it gives itself.
    let given = |flag: &str| {
        let name = flag.split('=').next().unwrap_or(flag);
        argv.iter()
            .skip(1)
            .any(|a| a == name || a.starts_with(&format!("{name}=")))
    };
    let mut merged = vec![argv.first().cloned().unwrap_or_default()];
    merged.extend(from_file.into_iter().filter(|f| !given(f)));
    merged.extend(argv.into_iter().skip(1));
    Ok(P::try_parse_from(merged)?)
}

/// The flags every elasti binary has: its namespace scope, its `--config` file, and the
/// log format. Binaries embed them with `#[command(flatten)]`.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// Namespaces whose ElastiServices are acted on (comma-separated); empty: all.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        default_value = "",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,

    /// A YAML file of flag values (`flag-name: value`); flags given on the command line win.
    #[arg(long, env = "ELASTI_CONFIG", default_value = "")]
    pub config: String,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "ELASTI_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

impl CommonArgs {
    /// The namespaces to watch, `None` for all.
    pub fn namespaces(&self) -> Option<Vec<String>> {
        namespaces(&self.watch_namespaces)
    }
}

/// Splits a comma-separated namespace list (`WATCH_NAMESPACES`) into `None` for all.
pub fn namespaces(list: &[String]) -> Option<Vec<String>> {
    let ns: Vec<String> = list.iter().filter(|n| !n.is_empty()).cloned().collect();
    (!ns.is_empty()).then_some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_is_a_clear_error() {
        assert!(file_args("max-held: {nested: 1}").is_err());
        assert!(file_args("- not a map").is_err());
    }

    #[test]
    fn empty_namespace_list_means_all() {
        assert_eq!(namespaces(&[String::new()]), None);
        assert_eq!(namespaces(&["a".into()]), Some(vec!["a".to_string()]));
    }
}
