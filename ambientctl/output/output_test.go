package output_test

import (
	"bytes"
	"testing"

	"github.com/ambientmesh/ambient/ambientctl/output"
)

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]output.Format{"": output.Table, "table": output.Table, "JSON": output.JSON, "yaml": output.YAML} {
		if got, err := output.ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := output.ParseFormat("xml"); err == nil {
		t.Error("xml accepted")
	}
}

func TestWriteTable_AlignsAndDashesEmptyCells(t *testing.T) {
	var b bytes.Buffer
	output.WriteTable(&b, output.Rows{Headers: []string{"A", "LONG HEADER", "C"}, Rows: [][]string{{"x", "", "z"}, {"wide cell", "y", ""}}}, "")
	want := "A           LONG HEADER   C\nx           -             z\nwide cell   y             -\n"
	if b.String() != want {
		t.Errorf("got\n%q\nwant\n%q", b.String(), want)
	}
	b.Reset()
	output.WriteTable(&b, output.Rows{Headers: []string{"A"}}, "Nothing found.")
	if b.String() != "Nothing found.\n" {
		t.Errorf("empty table: %q", b.String())
	}
}

func TestStream_ColumnsOnlyGrow(t *testing.T) {
	var b bytes.Buffer
	s := output.NewStream(&b, 4)
	s.Row("TIME", "WHO", "LAST")
	s.Row("12:00", "a-long-name", "x")
	s.Row("1", "b", "")
	want := "TIME   WHO   LAST\n12:00   a-long-name   x\n1       b             -\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
