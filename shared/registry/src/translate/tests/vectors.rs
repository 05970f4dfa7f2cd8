// placeholder, filled next
