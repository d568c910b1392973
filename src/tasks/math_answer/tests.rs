//! Hand-labelled pairs per answer class: equivalent forms that must match and near misses
//! that must not.

use super::*;
use crate::tasks::rational::int;
use proptest::prelude::*;

#[test]
fn boxed_extraction_handles_nesting() {
    assert_eq!(
        extract_boxed(r"so $\boxed{\frac{a}{\sqrt{b+{c}}}}$.").as_deref(),
        Some(r"\frac{a}{\sqrt{b+{c}}}")
    );
    assert_eq!(
        extract_boxed(r"\boxed{1} then \boxed{2}").as_deref(),
        Some("2")
    );
    assert_eq!(extract_boxed(r"\boxed 5$").as_deref(), Some("5"));
    assert_eq!(
        extract_boxed(r"\boxed{\{1,2\}}").as_deref(),
        Some(r"\{1,2\}")
    );
    assert_eq!(extract_boxed(r"\boxed{12"), None);
    assert_eq!(extract_boxed("no box"), None);
}

#[test]
fn number_normalization() {
    let half = Q::new(1.into(), 2.into());
    for s in [
        r"\frac{1}{2}",
        r"\dfrac{1}{2}",
        r"\tfrac12",
        "0.5",
        ".5",
        "1/2",
        r"\frac{2}{4}",
    ] {
        assert_eq!(parse_number(s), Some(half.clone()), "{s}");
    }
    for s in [r"-\frac{1}{2}", r"\frac{-1}{2}", "-0.5", r"$-\dfrac{1}{2}$"] {
        assert_eq!(parse_number(s), Some(-half.clone()), "{s}");
    }
    assert_eq!(parse_number("1{,}024"), Some(int(1024)));
    assert_eq!(parse_number("1,000,000"), Some(int(1_000_000)));
    assert_eq!(parse_number(r"25\%"), Some(int(25)));
    assert_eq!(parse_number("033"), Some(int(33)));
    assert_eq!(parse_number(r"90^\circ"), Some(int(90)));
    assert_eq!(parse_number("x = 5"), Some(int(5)));
    assert_eq!(parse_number(r"\text{5}"), Some(int(5)));
    assert_eq!(parse_number("1,2"), None);
    assert_eq!(parse_number("12,34"), None);
    assert_eq!(parse_number(r"\frac{1}{0}"), None);
    assert_eq!(parse_number(r"2\sqrt{2}"), None);
}

#[test]
fn real_competition_style_answers() {
    let yes = [
        (r"Thus the answer is $\boxed{\dfrac{7}{2}}$.", "3.5"),
        (r"\boxed{\frac{7}{2}}", "7/2"),
        (r"\boxed{1{,}024}", "1024"),
        (r"The answer is $\boxed{-\frac{1}{2}}$.", "-0.5"),
        (r"\boxed{25\%}", "25"),
        (r"\boxed{\textbf{(C)}\ 12}", "C"),
        (r"\boxed{\textbf{(C)}\ 12}", "12"),
        (r"\boxed{(B)}", r"\textbf{(B)}"),
        (r"\boxed{033}", "33"),
        (r"\boxed{2\sqrt{2}}", r"2\sqrt2"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\dfrac{\sqrt3}{2}"),
        (r"\boxed{90^\circ}", "90"),
        (r"\boxed{1,000,000}", "1000000"),
        ("204", "204"),
        (r"\boxed{\left(1, 2\right)}", "(1,2)"),
    ];
    for (reply, expected) in yes {
        assert!(answers_match(reply, expected), "{reply} vs {expected}");
    }
    let no = [
        (r"\boxed{\frac{1}{3}}", "0.33"),
        (r"\boxed{5}", "-5"),
        (r"\boxed{1,2}", "12"),
        (r"\boxed{\textbf{(D)}\ 12}", "C"),
        (r"\boxed{}", "0"),
        ("", "0"),
        (r"\boxed{2\sqrt{3}}", r"2\sqrt2"),
        (r"\boxed{1}\boxed{2}", "1"),
    ];
    for (reply, expected) in no {
        assert!(!answers_match(reply, expected), "{reply} vs {expected}");
    }
}

#[test]
fn row_separator_followed_by_space_stays_a_separator() {
    let key = r"\begin{pmatrix}1\\2\end{pmatrix}";
    for reply in [
        r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}",
        r"\boxed{\begin{pmatrix}1\\ 2\end{pmatrix}}",
    ] {
        assert!(answers_match(reply, key), "{reply}");
    }
    assert!(!answers_match(
        r"\boxed{\begin{pmatrix}1\\ 2\end{pmatrix}}",
        "12"
    ));
    assert_eq!(normalize(r"1 \\ 2"), normalize(r"1\\2"));
}

/// Each pair `(reply, expected)` must match; each near miss must not.
fn check(class: &str, same: &[(&str, &str)], differ: &[(&str, &str)]) {
    for (reply, expected) in same {
        assert!(
            answers_match(reply, expected),
            "{class}: {reply:?} should equal {expected:?}"
        );
    }
    for (reply, expected) in differ {
        assert!(
            !answers_match(reply, expected),
            "{class}: {reply:?} should differ from {expected:?}"
        );
    }
}

#[test]
fn powers_and_scientific_notation() {
    check(
        "powers",
        &[
            (r"\boxed{2^{10}}", "1024"),
            (r"\boxed{2^10}", "1024"),
            (r"\boxed{10^3}", "1000"),
            (r"\boxed{2^{-2}}", r"\frac14"),
            (r"\boxed{(-3)^3}", "-27"),
            (r"\boxed{-2^2}", "-4"),
            (r"\boxed{4^{1/2}}", "2"),
            (r"\boxed{8^{\frac{2}{3}}}", "4"),
            (r"\boxed{1.5\times10^{3}}", "1500"),
            (r"\boxed{1.5 \cdot 10^3}", "1500"),
            (r"\boxed{1.5e3}", "1500"),
            (r"\boxed{2.5E-2}", "0.025"),
            (r"\boxed{3 \times 10^{-1}}", r"\frac{3}{10}"),
        ],
        &[
            (r"\boxed{2^{10}}", "1000"),
            (r"\boxed{2^{10}}", "20"),
            (r"\boxed{10^3}", "30"),
            (r"\boxed{-2^2}", "4"),
            (r"\boxed{1.5\times10^{3}}", "15000"),
            (r"\boxed{1.5e3}", "1.53"),
            (r"\boxed{2^{1/3}}", "2"),
        ],
    );
}

#[test]
fn factorials() {
    check(
        "factorials",
        &[
            (r"\boxed{5!}", "120"),
            (r"\boxed{0!}", "1"),
            (r"\boxed{\frac{10!}{8!}}", "90"),
            (r"\boxed{3!\cdot 2}", "12"),
            (r"\boxed{(2+1)!}", "6"),
        ],
        &[
            (r"\boxed{5!}", "5"),
            (r"\boxed{5!}", "24"),
            (r"\boxed{5!!}", "15"),
            (r"\boxed{(-1)!}", "1"),
            (r"\boxed{2.5!}", "3"),
        ],
    );
}

#[test]
fn mixed_numbers() {
    check(
        "mixed numbers",
        &[
            (r"\boxed{2\frac{1}{2}}", r"\frac52"),
            (r"\boxed{2\frac12}", "2.5"),
            ("2 1/2", "5/2"),
            (r"\boxed{-1\frac{3}{4}}", "-1.75"),
            (r"\boxed{2\dfrac{1}{3}}", r"\frac{7}{3}"),
        ],
        &[
            (r"\boxed{2\frac{1}{2}}", "1"),
            (r"\boxed{\frac{2}{1}\cdot\frac12}", r"\frac52"),
            (r"\boxed{2\cdot\frac{1}{2}}", "2.5"),
            ("21/2", "2.5"),
            (r"\boxed{-1\frac{3}{4}}", "-0.25"),
        ],
    );
}

#[test]
fn units_and_currency() {
    check(
        "units",
        &[
            (r"\boxed{\$5}", "5"),
            (r"\boxed{5\text{ dollars}}", "5"),
            ("5 dollars", "5"),
            (r"\boxed{\$1{,}250}", "1250"),
            (r"\boxed{12 \text{ cm}}", "12"),
            (r"\boxed{12\text{cm}^2}", "12"),
            (r"\boxed{12\,\mathrm{m}}", "12"),
            ("12cm", "12"),
            (r"\boxed{90^\circ}", "90"),
            (r"\boxed{90^{\circ}}", "90"),
            ("90°", "90"),
            (r"\boxed{15\text{ square units}}", "15"),
            (r"\boxed{6 \text{ ways}}", "6"),
        ],
        &[
            (r"\boxed{\$5}", "50"),
            (r"\boxed{12 \text{ cm}}", "13"),
            (r"\boxed{90^\circ}", r"\frac{\pi}{2}"),
            ("12cm", "12m"),
            (r"\boxed{2m}", "2"),
        ],
    );
}

#[test]
fn percent() {
    check(
        "percent",
        &[
            (r"\boxed{50\%}", "50"),
            (r"\boxed{50\%}", "0.5"),
            (r"\boxed{0.5}", r"50\%"),
            (r"\boxed{12.5\%}", r"\frac18"),
            ("50 percent", "50"),
            (r"\boxed{50\%}", r"50\%"),
        ],
        &[
            (r"\boxed{0.5}", "50"),
            (r"\boxed{50}", "0.5"),
            (r"\boxed{50\%}", r"0.5\%"),
            (r"\boxed{50\%}", "5"),
        ],
    );
}

#[test]
fn radicals() {
    check(
        "radicals",
        &[
            (r"\boxed{\sqrt{8}}", r"2\sqrt{2}"),
            (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}"),
            (r"\boxed{\sqrt{12}}", r"2\sqrt3"),
            (r"\boxed{\sqrt{\frac{1}{2}}}", r"\frac{\sqrt2}{2}"),
            (r"\boxed{\frac{1}{1+\sqrt{2}}}", r"\sqrt{2}-1"),
            (r"\boxed{\sqrt{2}\cdot\sqrt{3}}", r"\sqrt{6}"),
            (r"\boxed{3\sqrt{2}/2}", r"\frac{3\sqrt{2}}{2}"),
            (r"\boxed{\sqrt{16}}", "4"),
            (r"\boxed{\sqrt[3]{27}}", "3"),
            (r"\boxed{2^{1/2}}", r"\sqrt2"),
            (r"\boxed{1+\sqrt{5}}", r"\sqrt{5}+1"),
        ],
        &[
            (r"\boxed{\sqrt{8}}", r"3\sqrt{2}"),
            (r"\boxed{\sqrt{8}}", "8"),
            (r"\boxed{\sqrt{2}}", r"\sqrt{3}"),
            (r"\boxed{\frac{\sqrt{2}}{2}}", r"\sqrt{2}"),
            (r"\boxed{1+\sqrt{5}}", r"1-\sqrt{5}"),
            (r"\boxed{\sqrt{2}+\sqrt{3}}", r"\sqrt{5}"),
            (r"\boxed{\sqrt[3]{2}}", r"\sqrt{2}"),
        ],
    );
}

#[test]
fn pi_multiples() {
    check(
        "pi",
        &[
            (r"\boxed{2\pi}", r"\pi\cdot 2"),
            (r"\boxed{\frac{\pi}{2}}", r"\frac12\pi"),
            (r"\boxed{\frac{\pi}{2}}", r"\pi/2"),
            (r"\boxed{\pi^1}", r"\pi"),
            (r"\boxed{\frac{3\pi}{4}}", r"0.75\pi"),
            (r"\boxed{4\pi^2}", r"(2\pi)^2"),
            (r"\boxed{\frac{2}{\pi}}", r"2\pi^{-1}"),
            (r"\boxed{\pi\sqrt{2}}", r"\sqrt2\pi"),
            ("2π", r"2\pi"),
            (r"\boxed{2\pi+1}", r"1+2\pi"),
        ],
        &[
            (r"\boxed{2\pi}", "2"),
            (r"\boxed{2\pi}", r"\pi"),
            (r"\boxed{\frac{\pi}{2}}", r"2\pi"),
            (r"\boxed{\pi^2}", r"2\pi"),
            (r"\boxed{2\pi}", "6.28"),
            (r"\boxed{\pi+1}", r"\pi"),
        ],
    );
}

#[test]
fn sets_unions_intervals() {
    check(
        "sets",
        &[
            (r"\boxed{\{1,2\}}", r"\{2,1\}"),
            (r"\boxed{\{1, 2, 2\}}", r"\{2,1\}"),
            (r"\boxed{\left\{\frac12, 3\right\}}", r"\{3, 0.5\}"),
            (r"\boxed{(0,1)\cup(2,3)}", r"(2,3)\cup(0,1)"),
            (
                r"\boxed{(-\infty, 0) \cup [1, \infty)}",
                r"[1,\infty)\cup(-\infty,0)",
            ),
            (r"\boxed{[0, \frac{1}{2})}", "[0,0.5)"),
            (r"\boxed{(-\infty,+\infty)}", r"(-\infty,\infty)"),
            (r"\boxed{1, 2}", "2, 1"),
            ("3, -1", r"\{-1, 3\}"),
            (r"\boxed{(1,2)}", r"\left(1, 2\right)"),
            (r"\boxed{\{(1,2),(3,4)\}}", r"\{(3,4),(1,2)\}"),
        ],
        &[
            (r"\boxed{(0,1)}", "[0,1]"),
            (r"\boxed{(0,1)}", "[0,1)"),
            (r"\boxed{(1,2)}", "(2,1)"),
            (r"\boxed{\{1,2\}}", r"\{1,3\}"),
            (r"\boxed{\{1,2\}}", r"\{1,2,3\}"),
            (r"\boxed{(0,1)\cup(2,3)}", r"(0,1)"),
            (r"\boxed{(0,1)\cup(2,3)}", r"(0,1)\cup[2,3]"),
            (r"\boxed{\{(1,2)\}}", r"\{(2,1)\}"),
            (r"\boxed{1,2}", "12"),
        ],
    );
}

#[test]
fn matrices() {
    check(
        "matrices",
        &[
            (
                r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}",
                r"\begin{pmatrix}1\\2\end{pmatrix}",
            ),
            (
                r"\boxed{\begin{pmatrix} \frac12 & 0 \\ 0 & 1 \end{pmatrix}}",
                r"\begin{pmatrix}0.5&0\\0&1\end{pmatrix}",
            ),
        ],
        &[
            (
                r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}",
                r"\begin{pmatrix}1\\2\end{pmatrix}",
            ),
            (r"\boxed{\begin{pmatrix}1\\ 2\end{pmatrix}}", "12"),
            (
                r"\boxed{\begin{pmatrix}1 & 2\end{pmatrix}}",
                r"\begin{pmatrix}1\\2\end{pmatrix}",
            ),
        ],
    );
}

#[test]
fn letter_answers() {
    check(
        "letters",
        &[
            (r"\boxed{(B)}", "b"),
            (r"\boxed{b}", "B"),
            (r"\boxed{\text{B}}", "(B)"),
            (r"\boxed{\textbf{(b)}}", "B"),
            ("The answer is (C).", "C"),
            (r"\boxed{\textbf{(C)}\ 12}", "c"),
        ],
        &[
            (r"\boxed{(B)}", "C"),
            (r"\boxed{c}", "B"),
            (r"\boxed{12}", "B"),
            (r"\boxed{F}", "f"),
        ],
    );
}

#[test]
fn unboxed_final_answers() {
    check(
        "unboxed",
        &[
            ("The answer is 7.", "7"),
            ("Final answer: 7", "7"),
            ("so the final answer is $\\frac{1}{2}$. Done.", "0.5"),
            ("We get 3 cases.\n**Final Answer:** 42\n", "42"),
            ("First the answer is 3, no wait.\nThe answer is 3.5.", "3.5"),
        ],
        &[
            ("The answer is 7.", "8"),
            ("Final answer: 7", "77"),
            ("The answer is 3. The check gives 4.", "4"),
            (r"The answer is 7, or \boxed{8}", "7"),
        ],
    );
}

#[test]
fn adversarial_sizes_are_refused_quickly() {
    let start = std::time::Instant::now();
    for (reply, expected) in [
        (r"\boxed{10^{100000}}", "1"),
        (r"\boxed{1000!}", "1"),
        (r"\boxed{9^{9^{9}}}", "1"),
        (r"\boxed{10^{10^{10}}}", "0"),
        (r"\boxed{1e99999999999}", "1"),
        (r"\boxed{\sqrt{99999999999999999999999}}", "1"),
        (r"\boxed{(1+\sqrt2)^{100000}}", "1"),
        (r"\boxed{\pi^{1000}}", "1"),
    ] {
        assert!(!answers_match(reply, expected), "{reply}");
    }
    let nested = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(!answers_match(&nested, "2"));
    let fracs = format!("{}1{}", r"\frac{".repeat(3000), "}{2}".repeat(3000));
    assert!(!answers_match(&fracs, "0"));
    let _ = parse_number(&fracs);
    // Non-ASCII text next to separators (a proptest find: byte slicing inside a char).
    for reply in ["*'Ⱥ\"é,t", "Ⱥ\\cupé", "Ⱥ&é\\\\ü"] {
        assert!(!answers_match(reply, "1"));
    }
    // Identical text still matches even when it cannot be evaluated.
    assert!(answers_match(r"\boxed{10^{100000}}", "10^{100000}"));
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

proptest! {
    #[test]
    fn never_panics(a in ".{0,40}", b in ".{0,10}") {
        let _ = answers_match(&a, &b);
        let _ = parse_number(&a);
    }

    #[test]
    fn never_panics_on_latex_soup(
        a in r"[0-9\\{}()\[\]^!.,+*/%$ a-z-]{0,60}",
        b in r"[0-9\\{}^!.,/-]{0,12}",
    ) {
        let _ = answers_match(&a, &b);
        let _ = answers_match(&b, &a);
    }

    #[test]
    fn integers_round_trip(n in -1_000_000i64..1_000_000) {
        let reply = format!(r"\boxed{{{n}}}");
        prop_assert!(answers_match(&reply, &n.to_string()));
    }
}
