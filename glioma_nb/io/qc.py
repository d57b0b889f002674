"""Cohort QC findings: every problem of a cohort collected into one report, each naming the case, the file and the fix."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from glioma_nb import paths


class CohortError(ValueError):
    """A cohort failed validation. ``report`` holds every problem found, not only the first."""

    def __init__(self, report: "QCReport") -> None:
        self.report = report
        super().__init__(report.format())


@dataclass
class Problem:
    """One QC finding: where it is, what is wrong, and how to fix it."""

    case: str | None
    file: str | None
    message: str
    fix: str
    severity: str = "error"  # error | warning

    def format(self) -> str:
        where = " ".join(x for x in (f"case {self.case}:" if self.case else "",
                                     f"{self.file}:" if self.file else "") if x)
        return f"[{self.severity}] {where} {self.message}; {self.fix}".strip()


@dataclass
class QCReport:
    """All problems of a cohort plus the per-case table built while checking."""

    cohort: str
    problems: list[Problem] = field(default_factory=list)
    case_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    root: Path | None = None

    def show(self, file: Path) -> str:
        """A file as shown in messages: relative to the folder above the cohort root when inside it."""
        if self.root is not None:
            try:
                return str(Path(file).resolve().relative_to(self.root.parent.resolve()))
            except ValueError:
                pass
        return paths.display_path(file)

    def add(self, case: str | None, file: str | Path | None, message: str, fix: str,
            severity: str = "error") -> None:
        shown = self.show(file) if isinstance(file, Path) else file
        self.problems.append(Problem(case, shown, message, fix, severity))

    def read_csv(self, path: Path, what: str, setting: str) -> pd.DataFrame | None:
        """A cohort's CSV table read as text (every value a string, nothing turned into NaN), or None with the
        problem reported: ``what`` names the table ("clinical table"), ``setting`` the key that points at it."""
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            self.add(None, path, f"{what} not found", f"fix {setting}")
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            self.add(None, path, f"{what} unreadable ({exc})", "save it as a UTF-8 CSV")
        return None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        head = (f"cohort {self.cohort}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join([head, *("  " + p.format() for p in self.problems)])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.problems],
                            columns=["case", "file", "message", "fix", "severity"])

    def __repr__(self) -> str:
        return f"QCReport(cohort={self.cohort!r}, errors={len(self.errors)}, warnings={len(self.warnings)})"
