// Command render executes an Ollama TEMPLATE the way Ollama does for a chat request.
//
// It reads JSON on stdin: {"template": "...", "messages": [{"role": ..., "content": ...}]}
// and prints the rendered prompt. With "conversations": [[messages...], ...] instead of
// "messages" it prints a JSON array with one rendering per conversation, so a test can
// check many conversations with one process.
//
// Like Ollama (template/template.go), it parses with missingkey=zero and executes with a
// map holding System (the system messages joined) and Messages (pointers to messages with
// Role and Content fields). Only standard text/template builtins are available.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template      string      `json:"template"`
	Messages      []message   `json:"messages"`
	Conversations [][]message `json:"conversations"`
}

func render(tmpl *template.Template, messages []message) (string, error) {
	var system []string
	pointers := make([]*message, len(messages))
	for i := range messages {
		pointers[i] = &messages[i]
		if messages[i].Role == "system" {
			system = append(system, messages[i].Content)
		}
	}
	var out strings.Builder
	err := tmpl.Execute(&out, map[string]any{
		"System":   strings.Join(system, "\n\n"),
		"Messages": pointers,
		"Response": "",
	})
	return out.String(), err
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail("bad request: %v", err)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fail("template does not parse: %v", err)
	}
	if req.Conversations == nil {
		out, err := render(tmpl, req.Messages)
		if err != nil {
			fail("template does not execute: %v", err)
		}
		fmt.Print(out)
		return
	}
	outputs := make([]string, len(req.Conversations))
	for i, messages := range req.Conversations {
		if outputs[i], err = render(tmpl, messages); err != nil {
			fail("template does not execute on conversation %d: %v", i, err)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(outputs); err != nil {
		fail("cannot write output: %v", err)
	}
}
