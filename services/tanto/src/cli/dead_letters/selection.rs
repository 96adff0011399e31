//! Which dead letters a command works on: ids, a filter, or all.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use clap::Args;

use crate::catalog::RecipientClass;
use crate::cli::Usage;
use crate::cli::time::parse_time;
use crate::dead_letters::{DeadLetterKind, Filter, RecordId, Selection};

/// Which dead letters: ids, or a filter whose every given field must match.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// Dead-letter ids, PARTITION:OFFSET (as `list` shows them).
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// The tenant named in the payload (a payload that is not JSON names none).
    #[arg(long)]
    tenant: Option<String>,
    /// Why it was set aside, e.g. unknown_tenant.
    #[arg(long)]
    reason: Option<String>,
    /// The topic it was read from, e.g. commerce.orders.
    #[arg(long, value_name = "TOPIC")]
    source_topic: Option<String>,
    /// Set aside at or after TIME: RFC 3339, a date (UTC), or an age (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Set aside before TIME: RFC 3339, a date (UTC), or an age (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Deliveries of this mail number, e.g. 5-1-2.
    #[arg(long, value_name = "NUMBER")]
    mail: Option<String>,
    /// Deliveries to a recipient reached through this class, e.g. company_wide.
    #[arg(long)]
    class: Option<String>,
    /// Deliveries to this address.
    #[arg(long)]
    address: Option<String>,
    /// Deliveries attempted at least N times.
    #[arg(long, value_name = "N")]
    min_attempts: Option<i32>,
    /// Every dead letter; a replay needs ids, a filter or this.
    #[arg(long)]
    pub(super) all: bool,
}

impl SelectionArgs {
    /// Checks the arguments; no ids and no filter select every record.
    pub(super) fn parse(
        &self,
        kind: &dyn DeadLetterKind,
        now: DateTime<Utc>,
    ) -> Result<Selection, Usage> {
        let filter = Filter {
            tenant: self.tenant.clone(),
            reason: self.reason.clone(),
            source_topic: self.source_topic.clone(),
            since: self
                .since
                .as_deref()
                .map(|t| parse_time("--since", t, now))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|t| parse_time("--until", t, now))
                .transpose()?,
            mail: self.mail.clone(),
            class: self.class.clone(),
            address: self.address.clone(),
            min_attempts: self.min_attempts,
        };
        check_delivery_filters(&filter, kind)?;
        if let Some(reason) = &filter.reason
            && !kind.reasons().contains(&reason.as_str())
        {
            return Err(Usage(format!(
                "--reason '{reason}' is not a reason of dead-lettered {}; use one of {}",
                kind.name(),
                kind.reasons().join(", ")
            )));
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Err(Usage("--since must be before --until".into()));
        }
        let given = [!self.ids.is_empty(), !filter.is_empty(), self.all];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Usage(
                "give ids, a filter or --all, not two of them together".into(),
            ));
        }
        if !self.ids.is_empty() {
            let ids: Result<BTreeSet<RecordId>, String> =
                self.ids.iter().map(|id| id.parse()).collect();
            return Ok(Selection::Ids(ids.map_err(Usage)?));
        }
        if filter.is_empty() {
            Ok(Selection::All)
        } else {
            Ok(Selection::Filter(filter))
        }
    }
}

/// Refuses the delivery filters for a kind whose records are not
/// deliveries, and a class that does not exist.
fn check_delivery_filters(filter: &Filter, kind: &dyn DeadLetterKind) -> Result<(), Usage> {
    let given = [
        ("--mail", filter.mail.is_some()),
        ("--class", filter.class.is_some()),
        ("--address", filter.address.is_some()),
        ("--min-attempts", filter.min_attempts.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, given)| *given)
        && !kind.holds_deliveries()
    {
        return Err(Usage(format!(
            "{flag} chooses deliveries; dead-lettered {} do not have it",
            kind.name()
        )));
    }
    if let Some(class) = &filter.class
        && RecipientClass::parse(class).is_none()
    {
        let known: Vec<&str> = RecipientClass::ALL.iter().map(|c| c.as_str()).collect();
        return Err(Usage(format!(
            "--class '{class}' is not a recipient class; use one of {}",
            known.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letters::EventDeadLetters;

    const EVENTS: EventDeadLetters = EventDeadLetters;

    fn now() -> DateTime<Utc> {
        "2026-12-03T12:00:00Z".parse().expect("time")
    }

    fn args(ids: &[&str]) -> SelectionArgs {
        SelectionArgs {
            ids: ids.iter().map(|id| id.to_string()).collect(),
            tenant: None,
            reason: None,
            source_topic: None,
            since: None,
            until: None,
            mail: None,
            class: None,
            address: None,
            min_attempts: None,
            all: false,
        }
    }

    #[test]
    fn ids_filters_and_all_do_not_mix() {
        let mut both = args(&["0:1"]);
        both.tenant = Some("acme".into());
        let err = both.parse(&EVENTS, now()).unwrap_err();
        assert!(err.0.contains("not two of them together"), "{err}");
        let ids = args(&["0:1", "1:7"]).parse(&EVENTS, now()).expect("ids");
        assert_eq!(ids.to_string(), "0:1 1:7");
        assert_eq!(
            args(&[]).parse(&EVENTS, now()).expect("all"),
            Selection::All
        );
    }

    #[test]
    fn an_unknown_reason_lists_the_known_ones() {
        let mut bad = args(&[]);
        bad.reason = Some("unknown_tennant".into());
        let err = bad.parse(&EVENTS, now()).unwrap_err();
        assert!(
            err.0
                .contains("use one of malformed_json, schema_violation"),
            "{err}"
        );
    }

    #[test]
    fn since_must_come_before_until() {
        let mut range = args(&[]);
        range.since = Some("1h".into());
        range.until = Some("2h".into());
        let err = range.parse(&EVENTS, now()).unwrap_err();
        assert_eq!(err.0, "--since must be before --until");
    }

    #[test]
    fn delivery_filters_are_for_deliveries_only() {
        let mut mail = args(&[]);
        mail.mail = Some("5-1-2".into());
        let err = mail.parse(&EVENTS, now()).unwrap_err();
        assert_eq!(
            err.0,
            "--mail chooses deliveries; dead-lettered events do not have it"
        );
        let deliveries = crate::dead_letters::DeliveryDeadLetters {
            deliveries_topic: "t".into(),
        };
        assert!(mail.parse(&deliveries, now()).is_ok());
        mail.class = Some("staff".into());
        let err = mail.parse(&deliveries, now()).unwrap_err();
        assert!(
            err.0
                .starts_with("--class 'staff' is not a recipient class"),
            "{err}"
        );
    }
}
