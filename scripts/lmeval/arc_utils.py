"""lm-eval task helpers for the ARC-V1-Feb2018 JSON-lines files in ../shared/data.

Each record {id, question: {stem, choices: [{text, label}]}, answerKey} becomes
{id, question, choices, gold}; the prompt format is lm-eval's own arc_easy task's
("Question: {question}\nAnswer:" with " {choice}" continuations), which is also
what `swiftkv eval --mc` uses, so the two accuracies are comparable item by item.
"""


def process_docs(dataset):
    def convert(doc):
        q = doc["question"]
        labels = [c["label"] for c in q["choices"]]
        return {
            "id": doc["id"],
            "question": q["stem"],
            "choices": [c["text"] for c in q["choices"]],
            "gold": labels.index(doc["answerKey"]),
        }

    return dataset.map(convert, remove_columns=dataset.column_names)
