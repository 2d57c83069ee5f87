// Package output prints ambientctl's results the way kubectl does: an
// aligned table with upper-case headers (-o table, the default), indented
// JSON (-o json) or YAML (-o yaml).
package output

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
)

// Format is an -o value.
type Format string

// The formats.
const (
	Table Format = "table"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// ParseFormat checks an -o value; "" is Table.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case "", "wide":
		return Table, nil
	case Table, JSON, YAML:
		return f, nil
	}
	return "", fmt.Errorf("unknown output format %q: use -o table, -o json or -o yaml", s)
}

// Rows is a table: headers and rows of cells.
type Rows struct {
	Headers []string
	Rows    [][]string
}

// WriteTable prints t aligned with three spaces between columns; an empty
// cell prints as "-". With no rows it prints msg instead (e.g. "No
// workloads found.") when msg is set.
func WriteTable(w io.Writer, t Rows, msg string) error {
	if len(t.Rows) == 0 && msg != "" {
		_, err := fmt.Fprintln(w, msg)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.Headers, "\t"))
	for _, r := range t.Rows {
		cells := make([]string, len(r))
		for i, c := range r {
			if c == "" {
				c = "-"
			}
			cells[i] = c
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// Write prints v as JSON or YAML; for Table it calls table.
func Write(w io.Writer, f Format, v any, table func() error) error {
	switch f {
	case JSON:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	case YAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	default:
		return table()
	}
}

// Stream prints table rows one at a time, for output that follows live
// events: each column is padded to the widest cell seen so far (so columns
// only grow), three spaces apart, and an empty cell prints as "-".
type Stream struct {
	w      io.Writer
	widths []int
}

// NewStream returns a Stream with the given minimum column widths.
func NewStream(w io.Writer, minWidths ...int) *Stream {
	return &Stream{w: w, widths: append([]int(nil), minWidths...)}
}

// Row prints one row.
func (s *Stream) Row(cells ...string) error {
	var b strings.Builder
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		if i == len(s.widths) {
			s.widths = append(s.widths, 0)
		}
		n := utf8.RuneCountInString(c)
		s.widths[i] = max(s.widths[i], n)
		b.WriteString(c)
		if i < len(cells)-1 {
			b.WriteString(strings.Repeat(" ", s.widths[i]-n+3))
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(s.w, b.String())
	return err
}
