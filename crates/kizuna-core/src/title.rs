//! Job levels (役職ランク) read from free-text job titles, so that rules such as "title ≥ manager
//! (部長以上)" can be written once for Japanese and English titles alike.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use unicode_normalization::UnicodeNormalization;

/// Seniority, from staff to executive. Ordered: `Manager < Director`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobLevel {
    /// 担当, 一般, engineer, analyst, specialist…
    Staff,
    /// 係長, 主任, リーダー, team lead, supervisor.
    Lead,
    /// 課長, 次長, 室長, 副部長, 部長代理, section/assistant manager.
    SectionManager,
    /// 部長, マネージャー, (general) manager.
    Manager,
    /// 本部長, 事業部長, 局長, 支店長, director, head of.
    Director,
    /// 代表取締役, 社長, 取締役, 執行役員, CxO, VP, president, founder.
    Executive,
}

impl JobLevel {
    /// All levels, lowest first.
    pub const ALL: [JobLevel; 6] = [
        Self::Staff,
        Self::Lead,
        Self::SectionManager,
        Self::Manager,
        Self::Director,
        Self::Executive,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staff => "staff",
            Self::Lead => "lead",
            Self::SectionManager => "section_manager",
            Self::Manager => "manager",
            Self::Director => "director",
            Self::Executive => "executive",
        }
    }

    /// Rank, 0 (staff) to 5 (executive).
    pub fn rank(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for JobLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a job level (one of: {})",
                    Self::ALL.map(|l| l.as_str()).join(", ")
                )
            })
    }
}

/// Japanese title fragments, most senior (and most specific) first; the first hit decides.
const JA: &[(&str, JobLevel)] = &[
    ("代表", JobLevel::Executive),
    ("社長", JobLevel::Executive),
    ("会長", JobLevel::Executive),
    ("取締役", JobLevel::Executive),
    ("執行役員", JobLevel::Executive),
    ("専務", JobLevel::Executive),
    ("常務", JobLevel::Executive),
    ("役員", JobLevel::Executive),
    ("本部長", JobLevel::Director),
    ("事業部長", JobLevel::Director),
    ("統括部長", JobLevel::Director),
    ("局長", JobLevel::Director),
    ("支社長", JobLevel::Director),
    ("支店長", JobLevel::Director),
    ("工場長", JobLevel::Director),
    ("所長", JobLevel::Director),
    ("部長代理", JobLevel::SectionManager),
    ("副部長", JobLevel::SectionManager),
    ("次長", JobLevel::SectionManager),
    ("課長", JobLevel::SectionManager),
    ("室長", JobLevel::SectionManager),
    ("グループ長", JobLevel::SectionManager),
    ("部長", JobLevel::Manager),
    ("マネージャー", JobLevel::Manager),
    ("マネジャー", JobLevel::Manager),
    ("係長", JobLevel::Lead),
    ("主任", JobLevel::Lead),
    ("リーダー", JobLevel::Lead),
];

/// English title words (whole words, lower case), most senior first.
const EN: &[(&[&str], JobLevel)] = &[
    (&["ceo"], JobLevel::Executive),
    (&["cto"], JobLevel::Executive),
    (&["cfo"], JobLevel::Executive),
    (&["coo"], JobLevel::Executive),
    (&["cmo"], JobLevel::Executive),
    (&["cio"], JobLevel::Executive),
    (&["chief"], JobLevel::Executive),
    (&["president"], JobLevel::Executive),
    (&["chairman"], JobLevel::Executive),
    (&["founder"], JobLevel::Executive),
    (&["cofounder"], JobLevel::Executive),
    (&["owner"], JobLevel::Executive),
    (&["vp"], JobLevel::Executive),
    (&["svp"], JobLevel::Executive),
    (&["evp"], JobLevel::Executive),
    (&["director"], JobLevel::Director),
    (&["head"], JobLevel::Director),
    (&["section", "manager"], JobLevel::SectionManager),
    (&["assistant", "manager"], JobLevel::SectionManager),
    (&["deputy", "manager"], JobLevel::SectionManager),
    (&["manager"], JobLevel::Manager),
    (&["gm"], JobLevel::Manager),
    (&["lead"], JobLevel::Lead),
    (&["leader"], JobLevel::Lead),
    (&["supervisor"], JobLevel::Lead),
];

/// The level a job title states; `None` for an empty title.
pub fn job_level(title: &str) -> Option<JobLevel> {
    let t: String = title.nfkc().collect::<String>().to_lowercase();
    if t.trim().is_empty() {
        return None;
    }
    for (frag, level) in JA {
        if t.contains(frag) {
            return Some(*level);
        }
    }
    let words: Vec<&str> = t
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for (seq, level) in EN {
        if words.windows(seq.len()).any(|w| w == *seq) {
            return Some(*level);
        }
    }
    Some(JobLevel::Staff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_titles() {
        for (t, want) in [
            ("代表取締役", JobLevel::Executive),
            ("取締役営業部長", JobLevel::Executive),
            ("副社長", JobLevel::Executive),
            ("営業本部長", JobLevel::Director),
            ("営業部長", JobLevel::Manager),
            ("部長", JobLevel::Manager),
            ("部長代理", JobLevel::SectionManager),
            ("課長", JobLevel::SectionManager),
            ("係長", JobLevel::Lead),
            ("主任", JobLevel::Lead),
            ("担当", JobLevel::Staff),
            ("マネージャー", JobLevel::Manager),
            ("ﾏﾈｰｼﾞｬｰ", JobLevel::Manager),
        ] {
            assert_eq!(job_level(t), Some(want), "{t}");
        }
    }

    #[test]
    fn english_titles() {
        for (t, want) in [
            ("CEO", JobLevel::Executive),
            ("VP Sales", JobLevel::Executive),
            ("Chief Marketing Officer", JobLevel::Executive),
            ("Director", JobLevel::Director),
            ("Head of IT", JobLevel::Director),
            ("Manager", JobLevel::Manager),
            ("Assistant Manager", JobLevel::SectionManager),
            ("Team Lead", JobLevel::Lead),
            ("Engineer", JobLevel::Staff),
            ("Leadership coach", JobLevel::Staff),
        ] {
            assert_eq!(job_level(t), Some(want), "{t}");
        }
        assert_eq!(job_level("  "), None);
    }

    #[test]
    fn ordered_by_seniority() {
        assert!(JobLevel::Manager > JobLevel::SectionManager);
        assert!(JobLevel::Executive > JobLevel::Director);
        assert_eq!("manager".parse::<JobLevel>(), Ok(JobLevel::Manager));
    }
}
