//! The one-line form of a command-line parser's error, shared by every front end: our
//! rule for bad input is one line naming the flag and exit status 2, while clap prints the
//! message, the flags it lists and a usage block over several lines.

/// The message up to its first blank line (the message and any flags it lists, such as
/// missing required ones), joined into one line, without clap's `error: ` prefix.
pub fn one_line(parser_message: &str) -> String {
    let first = parser_message
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match first.trim_start_matches("error: ") {
        "" => "bad usage".to_string(),
        msg => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn keeps_the_message_and_listed_flags_drops_the_usage_block() {
        let clap = "error: the following required arguments were not provided:\n  \
                    --socket <PATH>\n\nUsage: vnet-vhost --socket <PATH>\n\nFor more \
                    information, try '--help'.\n";
        assert_eq!(
            one_line(clap),
            "the following required arguments were not provided: --socket <PATH>"
        );
        assert_eq!(
            one_line("error: unexpected argument '--x' found\n\nUsage: a\n"),
            "unexpected argument '--x' found"
        );
        assert_eq!(one_line(""), "bad usage");
        assert_eq!(one_line("\n\nUsage: a"), "bad usage");
    }
}
