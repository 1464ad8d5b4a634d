//! The help states the effective default of every option. A value of the built-in paper
//! config (configs/paper.json, compiled in as `PAPER_CONFIG`) can't be a clap default (a
//! --config file must be able to override it), so its doc comment says
//! `[default: V (built-in paper config)]`; the tests here hold those texts to the config.

#[cfg(test)]
mod tests {
    use crate::cli::settings::PAPER_CONFIG;
    use crate::cli::Cli;
    use clap::CommandFactory;
    use serde_json::Value;
    use std::collections::BTreeSet;

    const MARK: &str = " (built-in paper config)";

    fn help_of(a: &clap::Arg) -> String {
        let h = a.get_long_help().or(a.get_help());
        let h = h.map(|h| h.to_string()).unwrap_or_default();
        h.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The value a help text states as its built-in default.
    fn stated(help: &str) -> Option<String> {
        let end = help.find(MARK)?;
        let start = help[..end].rfind("[default: ")? + "[default: ".len();
        Some(help[start..end].to_string())
    }

    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }

    #[test]
    fn stated_built_in_defaults_are_the_built_in_config() {
        let paper: Value = serde_json::from_str(PAPER_CONFIG).unwrap();
        let mut stated_keys = BTreeSet::new();
        for sub in Cli::command().get_subcommands() {
            for a in sub.get_arguments() {
                let Some(v) = stated(&help_of(a)) else {
                    continue;
                };
                let key = a.get_id().as_str();
                let flag = format!("gateau {} --{}", sub.get_name(), a.get_long().unwrap());
                let want = paper
                    .get(key)
                    .filter(|v| !v.is_null())
                    .unwrap_or_else(|| panic!("{flag}: no built-in {key:?} to state"));
                assert_eq!(v, text(want), "{flag}: stated default");
                stated_keys.insert(key.to_string());
            }
        }
        for (k, v) in paper.as_object().unwrap() {
            // The template strings are the plain template's, stated as "plain".
            if !v.is_null() && k != "template" {
                assert!(stated_keys.contains(k), "built-in {k:?} in no --help");
            }
        }
    }

    #[test]
    fn every_option_states_its_default() {
        // Extra outputs, off unless named.
        let extra = ["json", "plots"];
        let mut missing = Vec::new();
        for sub in Cli::command().get_subcommands() {
            for a in sub.get_arguments() {
                let takes_value = a.get_action().takes_values();
                if a.is_positional()
                    || !takes_value
                    || a.is_required_set()
                    || !a.get_default_values().is_empty()
                    || extra.contains(&a.get_id().as_str())
                {
                    continue;
                }
                if !help_of(a).contains("[default: ") {
                    missing.push(format!("{} --{}", sub.get_name(), a.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no default in the help of {missing:?}");
    }
}
