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
