//! The guard of every claim and outcome statement, written once for both SQL dialects (the
//! text is the same in PostgreSQL, SQLite and T-SQL).

/// An invocation still open to a claim or an outcome: `queued` or `running`, or recorded failed
/// "not queued" with attempts 0 (its publish was not confirmed, yet the message may have reached
/// the broker: its one run replaces that record). With a table alias, that alias's columns.
macro_rules! open_invocation {
    () => {
        "(status IN ('queued', 'running') OR (status = 'failed' AND attempts = 0))"
    };
    ($alias:literal) => {
        concat!(
            "(",
            $alias,
            ".status IN ('queued', 'running') OR (",
            $alias,
            ".status = 'failed' AND ",
            $alias,
            ".attempts = 0))"
        )
    };
}

pub(crate) use open_invocation;

/// An invocation that retention may remove: final with this outcome (any final one for a batch
/// `item`), not a batch item (unless `item`), no delivery still pending, ended before the
/// parameter `before`. Same text in every dialect but for the placeholder.
pub(crate) fn removable(succeeded: bool, item: bool, before: &str) -> String {
    format!(
        "{} AND finished_ms < {before} AND batch IS {}NULL
         AND NOT EXISTS (SELECT 1 FROM warren_deliveries d WHERE d.invocation = warren_invocations.id AND d.status = 'pending')",
        if item { "status IN ('succeeded', 'failed', 'timed_out', 'dead', 'cancelled')" } else { final_outcomes(succeeded) },
        if item { "NOT " } else { "" }
    )
}

/// The final outcomes a retention span covers: `succeeded`, or every other final one. Same text
/// in every dialect.
pub(crate) fn final_outcomes(succeeded: bool) -> &'static str {
    if succeeded {
        "status = 'succeeded'"
    } else {
        "status IN ('failed', 'timed_out', 'dead', 'cancelled')"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_alias_prefixes_every_column() {
        assert_eq!(
            open_invocation!("i"),
            "(i.status IN ('queued', 'running') OR (i.status = 'failed' AND i.attempts = 0))"
        );
    }
}
