"""The paper's MNIST tables (McMahan et al. 2017): cells, their settings and rounds to target."""

from dataclasses import dataclass

from fedavg_mnist.config import MODEL_NAMES, TARGET_ACCURACY

IID = "iid"
NON_IID = "pathological"
PARTITION_NAMES = {IID: "IID", NON_IID: "non-IID"}


@dataclass(frozen=True)
class Cell:
    """One configuration of a paper table and the paper's rounds to target (None: `—`)."""

    row: str
    column: str
    model: str
    partition: str  # IID or NON_IID
    client_fraction: float  # C
    local_epochs: int  # E
    batch_size: int | None  # B; None = ∞
    paper_rounds: int | None


@dataclass(frozen=True)
class PaperTable:
    """A table: its cells, and for each column the row that speed-ups are relative to."""

    name: str
    title: str
    row_header: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    baseline_row: str
    cells: tuple[Cell, ...]

    def cell(self, row: str, column: str) -> Cell:
        """Return the cell at (`row`, `column`)."""
        return next(c for c in self.cells if c.row == row and c.column == column)


def batch_label(batch_size: int | None) -> str:
    """B as the paper writes it: `∞` for the whole local dataset."""
    return "∞" if batch_size is None else str(batch_size)


def _table1(
    model: str, local_epochs: int, paper: dict[float, tuple[int | None, ...]]
) -> PaperTable:
    columns = [(p, b) for p in (IID, NON_IID) for b in (None, 10)]
    column_names = [f"{PARTITION_NAMES[p]}, B={batch_label(b)}" for p, b in columns]
    cells = tuple(
        Cell(
            row=f"{fraction}",
            column=name,
            model=model,
            partition=partition,
            client_fraction=fraction,
            local_epochs=local_epochs,
            batch_size=batch,
            paper_rounds=rounds[index],
        )
        for fraction, rounds in paper.items()
        for index, ((partition, batch), name) in enumerate(zip(columns, column_names, strict=True))
    )
    target = f"{TARGET_ACCURACY[model]:.0%}"
    network = MODEL_NAMES[model]
    return PaperTable(
        name=f"table1_{model}",
        title=f"Table 1, {network} (E={local_epochs}): rounds to {target} by client fraction C",
        row_header="C",
        rows=tuple(f"{fraction}" for fraction in paper),
        columns=tuple(column_names),
        baseline_row="0.0",
        cells=cells,
    )


def _fedsgd_table(
    name: str, model: str, title: str, paper: dict[tuple[int, int | None], tuple[int, int]]
) -> PaperTable:
    rows = []
    cells = []
    for (epochs, batch), rounds in paper.items():
        method = "FedSGD" if (epochs, batch) == (1, None) else "FedAvg"
        row = f"{method} E={epochs} B={batch_label(batch)}"
        rows.append(row)
        for partition, paper_rounds in zip((IID, NON_IID), rounds, strict=True):
            cells.append(
                Cell(
                    row=row,
                    column=PARTITION_NAMES[partition],
                    model=model,
                    partition=partition,
                    client_fraction=0.1,
                    local_epochs=epochs,
                    batch_size=batch,
                    paper_rounds=paper_rounds,
                )
            )
    return PaperTable(
        name=name,
        title=title,
        row_header="method",
        rows=tuple(rows),
        columns=(PARTITION_NAMES[IID], PARTITION_NAMES[NON_IID]),
        baseline_row=rows[0],
        cells=tuple(cells),
    )


TABLE1_MLP = _table1(
    "mlp",
    1,
    {
        0.0: (1455, 316, 4278, 3275),
        0.1: (1474, 87, 1796, 664),
        0.2: (1658, 77, 1528, 619),
        0.5: (None, 75, None, 443),
        1.0: (None, 70, None, 380),
    },
)
TABLE1_CNN = _table1(
    "cnn",
    5,
    {
        0.0: (387, 50, 1181, 956),
        0.1: (339, 18, 1100, 206),
        0.2: (337, 18, 978, 200),
        0.5: (164, 18, 1067, 261),
        1.0: (246, 16, None, 97),
    },
)
TABLE2_CNN = _fedsgd_table(
    "table2_cnn",
    "cnn",
    "Table 2, CNN (C=0.1): rounds to 99%, FedSGD versus FedAvg",
    {
        (1, None): (626, 483),
        (5, None): (179, 1000),
        (1, 50): (65, 600),
        (20, None): (234, 672),
        (1, 10): (34, 350),
        (5, 50): (29, 334),
        (20, 50): (32, 426),
        (5, 10): (20, 229),
        (20, 10): (18, 173),
    },
)
TABLE4_MLP = _fedsgd_table(
    "table4_mlp",
    "mlp",
    "Table 4, 2NN (C=0.1): rounds to 97%, FedSGD versus FedAvg",
    {
        (1, None): (1468, 1817),
        (10, None): (156, 1100),
        (1, 50): (144, 1183),
        (20, None): (92, 957),
        (1, 10): (92, 831),
        (10, 50): (45, 881),
        (20, 50): (39, 835),
        (10, 10): (34, 497),
        (20, 10): (32, 738),
    },
)
TABLES = (TABLE1_MLP, TABLE1_CNN, TABLE2_CNN, TABLE4_MLP)
