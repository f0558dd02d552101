"""The names of a run's models (roles): what each one is, and which student it belongs to.

A run with one student names its models as it always has: teacher, baseline, student (distilled),
control, int8, fp16. A run with several students suffixes every student-side role with its
architecture (baseline-resnet18, student-resnet18, int8-resnet18 ...): one role name, one file name.
The teacher's own INT8 and FP16 files (the compression that needs no training) are teacher-int8 and teacher-fp16.
"""

from __future__ import annotations

import re
from typing import Iterable

TEACHER = "teacher"
KINDS = ("baseline", "student", "control", "int8", "fp16")  # a student's models, in the order they are shown
TRAINED = ("baseline", "student", "control")  # the kinds compress trains; int8 and fp16 are made from "student"
FORMATS = {"int8": "INT8", "fp16": "FP16"}  # the kinds that are another format of the distilled student
TEACHER_FORMATS = {"teacher-int8": "int8", "teacher-fp16": "fp16"}  # the teacher's own formats: role -> format kind
LABELS = {
    "teacher-int8": "teacher int8", "teacher-fp16": "teacher fp16", "teacher": "teacher", "baseline": "baseline", "student": "distilled",
    "control": "label smoothing", "int8": "distilled int8", "fp16": "distilled fp16",
}  # fmt: skip


ARCHITECTURE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")  # a timm model name as it names files (config.split_students)


def is_role(name: object) -> bool:
    """Whether name is a role kdc makes: teacher, a kind, or KIND-ARCH with a plain model name (no path separator, no '..')."""
    if not isinstance(name, str):
        return False
    kind, dash, architecture = name.partition("-")
    if name == TEACHER or name in TEACHER_FORMATS or (kind in KINDS and not dash):
        return True
    return kind in KINDS and bool(ARCHITECTURE.fullmatch(architecture)) and ".." not in architecture


def role(kind: str, architecture: str | None = None) -> str:
    """baseline -> 'baseline' (one student), or 'baseline-resnet18' (architecture given: one of several)."""
    return kind if architecture is None else f"{kind}-{architecture}"


def kind_of(name: str) -> str:
    """'student-resnet18' -> 'student'; 'teacher' -> 'teacher'; an unknown name is its own kind."""
    kind, _, _ = name.partition("-")
    return kind if kind in KINDS else name


def student_of(name: str) -> str | None:
    """'student-resnet18' -> 'resnet18'; a role of a one-student run (or the teacher) -> None."""
    kind, dash, architecture = name.partition("-")
    return architecture if dash and kind in KINDS else None


def sibling(name: str, kind: str) -> str:
    """The role of the same student with another kind: sibling('int8-resnet18', 'baseline') -> 'baseline-resnet18'."""
    return role(kind, student_of(name))


def is_teacher(name: str) -> bool:
    """The teacher or one of its own formats (teacher-int8, teacher-fp16): no baseline, no distillation verdict."""
    return name == TEACHER or name in TEACHER_FORMATS


def format_of(name: str) -> str | None:
    """'int8' or 'fp16' for a file made from an FP32 model (the distilled student's or the teacher's); None otherwise."""
    kind = TEACHER_FORMATS.get(name, kind_of(name))
    return kind if kind in FORMATS else None


def source_of(name: str) -> str:
    """The FP32 model a format file is made from: 'teacher' for teacher-int8, 'student-resnet18' for int8-resnet18."""
    return TEACHER if name in TEACHER_FORMATS else sibling(name, "student")


def format_role(source: str, kind: str) -> str:
    """The role of source's file in format kind: ('teacher', 'int8') -> 'teacher-int8'; ('student-x', 'int8') -> 'int8-x'."""
    return f"{TEACHER}-{kind}" if source == TEACHER else sibling(source, kind)


def label(name: str) -> str:
    """How a role is shown in tables: 'distilled', or 'distilled resnet18' in a run with several students."""
    kind, architecture = kind_of(name), student_of(name)
    text = LABELS.get(kind, name)
    return text if architecture is None else f"{text} {architecture}"


def ordered(names: Iterable[str]) -> list[str]:
    """The teacher first, then each student (in the order first seen) with its models in KINDS order."""
    names = list(names)
    students: list[str | None] = []
    for name in names:
        if not is_teacher(name) and kind_of(name) in KINDS and student_of(name) not in students:
            students.append(student_of(name))
    order = [n for n in (TEACHER, *TEACHER_FORMATS) if n in names]
    order += [role(kind, s) for s in students for kind in KINDS if role(kind, s) in names]
    return order + [n for n in names if n not in order]  # anything else (a foreign role) last, as found


PRUNED = re.compile(r"pruned(\d{1,2})")  # a student name that means "the teacher, this percent of channels removed"


def pruned_name(ratio: float) -> str:
    """0.5 -> 'pruned50': the student name (and file name part) of the teacher pruned at ratio (train.prune)."""
    return f"pruned{round(ratio * 100)}"


def pruned_ratio(name: str) -> float | None:
    """'pruned50' -> 0.5; None for a name that is not a pruned student's."""
    match = PRUNED.fullmatch(name)
    return int(match.group(1)) / 100 if match else None
