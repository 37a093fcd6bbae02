"""A small hand-written corpus and questions about it, for pipeline tests."""

from loaders.documents import Document

CORPUS = [
    Document("eiffel", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was "
             "designed by the company of Gustave Eiffel and built from 1887 to 1889.",
             title="Eiffel Tower"),
    Document("everest", "Mount Everest is the highest mountain on Earth above sea level. It "
             "lies in the Himalayas on the border of Nepal and China.", title="Mount Everest"),
    Document("newton", "Isaac Newton was an English mathematician and physicist. His book "
             "Principia was first published in 1687 and founded classical mechanics.",
             title="Isaac Newton"),
    Document("amazon", "The Amazon River in South America is the largest river by discharge "
             "volume of water in the world.", title="Amazon River"),
    Document("tokyo", "Tokyo is the capital and most populous city of Japan. The Greater Tokyo "
             "Area is the most populous metropolitan area in the world.", title="Tokyo"),
    Document("moon", "The Moon is the only natural satellite of Earth. It orbits Earth every "
             "27 days at an average distance of 384,399 kilometers.", title="Moon"),
]
QUESTIONS = [
    "Who designed the Eiffel Tower?",
    "What is the highest mountain on Earth?",
    "When was Principia first published?",
    "Which river has the largest discharge?",
    "What is the capital of Japan?",
    "How far away is the Moon from Earth?",
]
