//! What an operator command prints for the API's answer: the answer itself under `-o json`,
//! or a view for people (a table, a description, a sentence). Every command goes through
//! [`render`], so `-o json` means the same thing everywhere.

use clap::ValueEnum;
use serde::de::DeserializeOwned;

/// The `-o` flag.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    // No doc comments on the variants: clap would add them to every --help.
    Table,
    Json,
}

/// How `-o json` lays out the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonLayout {
    /// Indented, for lists and descriptions people read too.
    Pretty,
    /// One line, for acknowledgements of a change (`token create`, `drain`, `delete`).
    Line,
}

/// The text to print for the API's `answer`: under [`Format::Json`] the answer as the API
/// sent it, else `for_people` of the answer read as a `T`. It ends with a newline unless
/// `for_people`'s text does not (a task's log is printed as it is).
pub(crate) fn render<T: DeserializeOwned>(
    format: Format,
    layout: JsonLayout,
    answer: serde_json::Value,
    for_people: impl FnOnce(T) -> String,
) -> anyhow::Result<String> {
    Ok(match (format, layout) {
        (Format::Json, JsonLayout::Pretty) => serde_json::to_string_pretty(&answer)? + "\n",
        (Format::Json, JsonLayout::Line) => format!("{answer}\n"),
        (Format::Table, _) => for_people(serde_json::from_value(answer)?),
    })
}

/// Prints [`render`]'s text on stdout.
pub(crate) fn print<T: DeserializeOwned>(
    format: Format,
    layout: JsonLayout,
    answer: serde_json::Value,
    for_people: impl FnOnce(T) -> String,
) -> anyhow::Result<()> {
    print!("{}", render(format, layout, answer, for_people)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables;
    use actormesh_master::deployments::DeploymentSummary;

    fn rows() -> Vec<DeploymentSummary> {
        ["web", "api"]
            .into_iter()
            .map(|name| DeploymentSummary {
                namespace: "shop".into(),
                name: name.into(),
                version: "v3".into(),
                replicas: 3,
                running: 2,
                pending: 1,
                old: 0,
                done: 0,
                unplaced: Some("no agent with mem:8GiB".into()),
                stalled: false,
            })
            .collect()
    }

    fn deployments(format: Format, layout: JsonLayout, answer: serde_json::Value) -> String {
        render(format, layout, answer, |d: Vec<DeploymentSummary>| {
            tables::deployments(&d)
        })
        .unwrap()
    }

    #[test]
    fn the_same_rows_as_a_table_and_as_json() {
        let answer = serde_json::to_value(rows()).unwrap();
        assert_eq!(
            deployments(Format::Table, JsonLayout::Pretty, answer.clone()),
            "NAME                     VERSION  REPLICAS  RUNNING  PENDING  WHY NOT PLACED\n\
             shop/web                 v3              3        2        1  no agent with mem:8GiB\n\
             shop/api                 v3              3        2        1  no agent with mem:8GiB\n"
        );
        let json = deployments(Format::Json, JsonLayout::Pretty, answer.clone());
        assert_eq!(json, serde_json::to_string_pretty(&answer).unwrap() + "\n");
        assert!(json.starts_with("[\n  {\n"), "{json}");
        let back: Vec<DeploymentSummary> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rows());
        let line = deployments(Format::Json, JsonLayout::Line, answer.clone());
        assert_eq!(line.lines().count(), 1, "{line}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            answer
        );
    }

    #[test]
    fn an_empty_list_is_a_header_or_an_empty_array() {
        let answer = serde_json::json!([]);
        assert_eq!(
            deployments(Format::Table, JsonLayout::Pretty, answer.clone()),
            "NAME                     VERSION  REPLICAS  RUNNING  PENDING  WHY NOT PLACED\n"
        );
        assert_eq!(
            deployments(Format::Json, JsonLayout::Pretty, answer.clone()),
            "[]\n"
        );
        assert_eq!(deployments(Format::Json, JsonLayout::Line, answer), "[]\n");
    }

    #[test]
    fn json_passes_on_what_the_api_sent_even_what_the_table_cannot_read() {
        // A newer master may add fields or kinds: scripts still get everything it sent.
        let answer = serde_json::json!({ "from_a_newer_master": [1, 2] });
        assert_eq!(
            deployments(Format::Json, JsonLayout::Line, answer.clone()),
            "{\"from_a_newer_master\":[1,2]}\n"
        );
        let unreadable = render(
            Format::Table,
            JsonLayout::Pretty,
            answer,
            |d: Vec<DeploymentSummary>| tables::deployments(&d),
        );
        assert!(unreadable.is_err());
    }
}
